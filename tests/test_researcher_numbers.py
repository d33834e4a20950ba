"""The numbers a researcher reads later: best epoch, probabilities, CIs, demo signal, QC flags, files.

Each test here kills a mutant that passed the rest of the suite (issue 23): a realistic small bug that
leaves shapes and types right but writes a wrong number into a file (the saved model's epoch, the
CSV's probability, a bootstrap bound, the demo's AD effect, a QC flag, a tuned threshold) or loses a
file. The test names say which behaviour is relied on.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mri_slice_transfer.engine.handlers import BestModelSaver
from mri_slice_transfer.engine.metrics import DecisionThreshold, lower_is_better, tune_threshold
from mri_slice_transfer.engine.predictions import PredictionWriter
from mri_slice_transfer.experiments.bootstrap import bootstrap_ci
from mri_slice_transfer.fileio import atomic_path, atomic_write_text
from mri_slice_transfer.networks.slice_set import LearnedPositionEncoding
from mri_slice_transfer.vocabulary import task_spec


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# --- the saved model is the best epoch's -------------------------------------------------------


def _run_epochs(tmp_path: Path, task: str, values: list[float]) -> BestModelSaver:
    """Feed one validation value per epoch through the handler (the network's weight = epoch number)."""
    net = torch.nn.Linear(1, 1, bias=False)
    name = "val_" + task_spec(task).key_metric
    saver = BestModelSaver(net, str(tmp_path / "model.pt"), name, lower_is_better(task))
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        others = {
            "val_other": -1.0,
            "val_t": torch.tensor(0.25),
            "val_vec": torch.tensor([1.0, 2.0]),
            "note": "x",
        }
        engine = SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={name: value, **others}))
        saver(engine)
    return saver


@pytest.mark.parametrize(
    "task,values",
    [
        ("adni_ad", [0.55, 0.80, 0.62, 0.80, 0.71]),  # balanced accuracy: the first maximum (epoch 2)
        ("adni_ad", [0.90, 0.50, 0.40]),  # the first epoch stays best when it is the maximum
        ("brain_age", [6.0, 4.1, 4.5, 3.9, 7.2]),  # MAE: the minimum (epoch 4)
        ("brain_age", [3.0, 5.0, float("nan"), 4.0]),  # a NaN epoch never replaces a real one
        ("brain_age", [5.0, 4.0, 4.0, 4.5]),  # a tie keeps the earlier epoch
    ],
)
def test_saved_model_is_the_best_validation_epoch(tmp_path: Path, task: str, values: list[float]) -> None:
    """models/model.pt and model.json hold the argmax of balanced accuracy (AD) / argmin of MAE (age)."""
    assert _run_epochs(tmp_path / "none", task, []).state_dict() == {"best": None, "best_epoch": 0}
    saver = _run_epochs(tmp_path, task, values)
    finite = np.where(np.isnan(values), np.inf if lower_is_better(task) else -np.inf, values)
    best = int(np.argmin(finite) if lower_is_better(task) else np.argmax(finite)) + 1
    record = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    assert record["epoch"] == best and record["key_metric"] == "val_" + task_spec(task).key_metric
    # every scalar metric of that epoch (numbers and 1-element tensors) is recorded, nothing else
    assert record["metrics"] == {
        "val_" + task_spec(task).key_metric: values[best - 1],
        "val_other": -1.0,
        "val_t": 0.25,
    }
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["weight"].item() == float(best)  # the weights of that epoch, not of a later one
    assert saver.state_dict() == {"best": values[best - 1], "best_epoch": best}  # what a resumed run restores


# --- predictions CSV: the probability is P(AD) = sigmoid(logit) ---------------------------------


def _write_predictions(tmp_path: Path, logits: list[float], labels: list[float], threshold: float) -> dict:
    writer = PredictionWriter(
        "adni_ad", str(tmp_path / "pred.csv"), str(tmp_path / "metrics.json"), threshold
    )
    batch = [
        {"subject_id": f"s{i}", "session_id": "ses-1", "image_path": f"s{i}.nii", "label": torch.tensor([y])}
        for i, y in enumerate(labels)
    ]
    output = [{"pred": torch.tensor([z])} for z in logits]
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output))
    writer.reset()
    writer.collect(engine)
    return writer.write()


def test_csv_probability_is_sigmoid_of_the_ad_logit(tmp_path: Path) -> None:
    """A positive logit is an AD call with probability > 0.5; the CSV's AUC equals the metrics file's."""
    logits = [-3.0, -0.4, 0.2, 2.5, 1.0, -1.5]
    labels = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    metrics = _write_predictions(tmp_path, logits, labels, threshold=0.5)
    pred = pd.read_csv(tmp_path / "pred.csv")
    np.testing.assert_allclose(pred["probability"], _sigmoid(np.float32(logits)), rtol=1e-12)
    assert list(pred["predicted"]) == ["AD" if z > 0 else "CN" for z in logits]
    auc = roc_auc_score(pred["label"], pred["probability"])
    assert auc == pytest.approx(metrics["roc_auc"]) and auc != pytest.approx(0.5)
    on_disk = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk["roc_auc"] == pytest.approx(auc)


def test_evaluate_csv_matches_the_network_and_test_metrics(tmp_path: Path) -> None:
    """Bundle evaluate run: each CSV probability is sigmoid of the network's output for that scan, and
    ROC AUC recomputed from test_predictions.csv equals test_metrics.json."""
    from test_bundles import FAST, bundle_precision, copy_bundle, run_workflow, write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data", n_per_split=(2, 2, 8), seed=3)
    bundle = copy_bundle(tmp_path / "b")
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    torch.manual_seed(0)  # an untrained tiny network is enough: the test is about bookkeeping
    from monai.bundle import ConfigParser

    net = ConfigParser({"net": FAST["network_def"]}).get_parsed_content("net")
    (bundle / "models").mkdir()
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    wf = run_workflow(configs, "eval", dataset_dir=str(data), decision_threshold=0.5, **FAST)
    network = wf.parser.get_parsed_content("network").eval()
    dataset = wf.parser.get_parsed_content("validate#dataset")
    with torch.no_grad(), bundle_precision(wf):
        logit = {d["image_path"]: float(network(d["image"][None]).reshape(-1)[0]) for d in dataset}
    pred = pd.read_csv(bundle / "eval" / "test_predictions.csv")
    np.testing.assert_allclose(pred["probability"], _sigmoid(pred["image"].map(logit)), rtol=1e-5)
    metrics = json.loads((bundle / "eval" / "test_metrics.json").read_text(encoding="utf-8"))
    auc = roc_auc_score(pred["label"], pred["probability"])
    assert metrics["roc_auc"] == pytest.approx(auc, abs=1e-9) and auc != pytest.approx(0.5)


# --- bootstrap confidence intervals -------------------------------------------------------------


@pytest.mark.parametrize("level,low_q,high_q", [(0.95, 0.025, 0.975), (0.90, 0.05, 0.95)])
def test_bootstrap_bounds_are_the_level_percentiles_of_the_resamples(level, low_q, high_q) -> None:
    """A 95 % CI is the 2.5 / 97.5 percentiles of the resampled MAE (90 %: 5 / 95); one scan a subject."""
    rng = np.random.default_rng(4)
    age = rng.uniform(50, 80, 40)
    pred = age + rng.normal(0, 5, 40)
    subjects = [f"sub-{i:03d}" for i in range(40)]  # sorted ids: subject k is scan k
    n_boot, seed = 400, 7
    lo, hi = bootstrap_ci("brain_age", pred, age, subjects, n_bootstrap=n_boot, seed=seed, level=level)["mae"]
    # the resamples, drawn as implemented: n_subjects subject indices per resample from default_rng(seed)
    picks = np.random.default_rng(seed).integers(0, len(age), size=(n_boot, len(age)))
    maes = np.abs(pred - age)[picks].mean(axis=1)
    assert lo == pytest.approx(np.quantile(maes, low_q), rel=1e-12)
    assert hi == pytest.approx(np.quantile(maes, high_q), rel=1e-12)


# --- the demo's AD signal -----------------------------------------------------------------------


def _mtl_and_ventricles(img: np.ndarray) -> tuple[float, float]:
    """(mean MTL intensity / brain median, ml of dark CSF-like voxels in a box around the ventricles).

    MTL grey matter giving way to CSF darkens the region (grey matter -> CSF intensity).
    """
    from mri_slice_transfer.data.anatomy import _world, mtl_region
    from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE

    xyz = _world(TEMPLATE_SHAPE, TEMPLATE_AFFINE)
    x, y, z = xyz
    brain = img > 0
    median = float(np.median(img[brain]))
    box = (np.abs(x) < 30) & (y > -45) & (y < 30) & (z > -5) & (z < 35)
    return float(img[mtl_region(xyz) > 0.5].mean() / median), float(
        ((img < 0.6 * median) & brain & box).sum() * 8e-3
    )


@pytest.mark.parametrize("subject_seed", [21, 22])
def test_demo_ad_twin_has_less_mtl_grey_matter_and_larger_ventricles(subject_seed: int) -> None:
    """Same subject and scan seeds, AD vs CN: the AD scan's MTL is darker (grey matter -> CSF) and
    contracts (it shows the template from outside the MTL), and its ventricles are larger."""
    from mri_slice_transfer.data.anatomy import ScanParams, _world, displacement_field, mtl_region
    from mri_slice_transfer.data.anatomy import subject_anatomy as anatomy
    from mri_slice_transfer.data.synthetic import synthesize_scan
    from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE

    scans, params = {}, {}
    for dx in ("CN", "AD"):
        params[dx] = ScanParams(age=74, dx=dx, sex="F", site="site-A", subject_seed=subject_seed, scan_seed=5)
        scans[dx] = _mtl_and_ventricles(synthesize_scan(params[dx], "template")[0].astype(np.float32))
    (mtl_cn, vent_cn), (mtl_ad, vent_ad) = scans["CN"], scans["AD"]
    assert mtl_ad < mtl_cn - 0.03, scans
    assert vent_ad > 1.1 * vent_cn, scans
    # contraction: the extra AD displacement points down the MTL region's gradient (backward map)
    region = mtl_region(_world(TEMPLATE_SHAPE, TEMPLATE_AFFINE))
    grad = np.stack(np.gradient(region, 2.0)) * np.sign(np.diag(TEMPLATE_AFFINE)[:3]).reshape(3, 1, 1, 1)
    extra = displacement_field(anatomy(params["AD"])) - displacement_field(anatomy(params["CN"]))
    shell = (region > 0.05) & (region < 0.95)
    assert float((extra * grad).sum(axis=0)[shell].mean()) < 0.0


# --- atomic writes ------------------------------------------------------------------------------


def test_a_writer_failing_half_way_leaves_the_previous_file(tmp_path: Path) -> None:
    """The previous model / CSV survives a crash mid-write, and no temporary file is left behind."""
    target = tmp_path / "results.csv"
    atomic_write_text(target, "epoch,mae\n1,4.2\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp != target and tmp.parent == target.parent
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("epoch,ma")  # half a file
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "epoch,mae\n1,4.2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]
    with atomic_path(target) as tmp:  # and a successful write replaces it whole
        tmp.write_text("epoch,mae\n2,3.9\n", encoding="utf-8")
        assert target.read_text(encoding="utf-8") == "epoch,mae\n1,4.2\n"  # not yet visible
    assert target.read_text(encoding="utf-8") == "epoch,mae\n2,3.9\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_json_outputs_write_nan_as_null_at_any_depth(tmp_path: Path) -> None:
    """metrics / model records: an undefined metric (NaN, inf) is JSON null wherever it sits."""
    from mri_slice_transfer.fileio import atomic_write_json

    target = tmp_path / "metrics.json"
    atomic_write_json(
        target, {"roc_auc": float("nan"), "runs": [0.5, float("inf"), {"r": float("-inf")}], "n": 3}
    )
    assert json.loads(target.read_text(encoding="utf-8")) == {
        "roc_auc": None,
        "runs": [0.5, None, {"r": None}],
        "n": 3,
    }
    atomic_write_json(target, {"model": tmp_path / "model.pt"}, default=str)
    assert json.loads(target.read_text(encoding="utf-8")) == {"model": str(tmp_path / "model.pt")}


# --- prepare QC: implausible head-size scaling --------------------------------------------------


@pytest.mark.parametrize("scale,flagged", [(0.6, True), (1.6, True), (1.0, False), (0.8, False)])
def test_registration_qc_flags_an_implausible_scale(monkeypatch, scale: float, flagged: bool) -> None:
    """A template->scan scale of 0.6 or 1.6 on every axis is flagged (either bound alone suffices)."""
    sitk = pytest.importorskip("SimpleITK")
    from mri_slice_transfer.prepare import registration as reg

    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple((np.eye(3) * scale).ravel()))
    monkeypatch.setattr(reg, "_register", lambda *a, **k: (affine, -0.5))
    monkeypatch.setattr(reg, "_correlation", lambda *a, **k: 0.9)  # a good match otherwise
    moving = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 1, (30, 36, 30)).astype(np.float32))
    moving.SetSpacing((3.0, 3.0, 3.0))
    result = reg.register_to_template(moving, dof=9)
    assert result.scales == pytest.approx((scale,) * 3)
    assert result.flagged is flagged, result.flags
    assert any("implausible scaling" in f for f in result.flags) is flagged


# --- tuned AD threshold -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels,tied,called",
    [
        ([0, 1, 0, 1, 0, 1], [0.5, 2.5, 4.5], [0, 0, 0, 1, 1, 1]),  # three tied cuts: the second
        ([0, 0, 1, 0, 1, 1], [1.5, 3.5], [0, 0, 0, 0, 1, 1]),  # two tied cuts: the upper one (index 2 // 2)
    ],
)
def test_tied_threshold_cuts_give_the_middle_one(labels, tied, called) -> None:
    """Several cuts with the same best balanced accuracy: the middle one decides which scans are AD.

    Logits 0..5; the tied cuts are checked below, not assumed. Stated through the scans called AD, so it
    holds whether the threshold is a probability or a logit.
    """
    logits = np.arange(6.0)
    labels = np.array(labels)
    scores = {}
    for cut in (logits[1:] + logits[:-1]) / 2:
        hat = logits > cut
        scores[cut] = (hat[labels == 1].mean() + (~hat[labels == 0]).mean()) / 2
    assert sorted(c for c, s in scores.items() if s == max(scores.values())) == tied
    threshold = tune_threshold(logits, labels)
    got = logits >= threshold.logit
    assert list(got) == [bool(c) for c in called]


@pytest.mark.parametrize(
    "metrics,probability",
    [
        ({"threshold": 0.7}, 0.7),  # an older test_metrics.json: the probability only
        ({"threshold": 0.7, "threshold_logit": None}, 0.7),
        ({"threshold": 0.7, "threshold_logit": -1.0}, _sigmoid(-1.0)),  # the logit is the cut used
        ({}, 0.5),  # neither: the fixed threshold
    ],
)
def test_grid_bootstrap_uses_the_threshold_of_the_test_metrics(metrics: dict, probability: float) -> None:
    """metrics_threshold: the cut the grid's bootstrap CIs of balanced accuracy / F1 are computed at is
    the one test_metrics.json was computed at, also for files written before threshold_logit existed."""
    from mri_slice_transfer.engine.metrics import metrics_threshold

    got = metrics_threshold(metrics)
    assert isinstance(got, DecisionThreshold)
    assert got.probability == pytest.approx(float(probability), rel=1e-12)


# --- networks: the learned position is added before the LayerNorm ------------------------------


def test_learned_position_is_added_before_the_layernorm() -> None:
    """LayerNorm over each volume's K x d block of (embedding + p), with its affine weights."""
    torch.manual_seed(3)
    k, d = 5, 4
    pe = LearnedPositionEncoding(k, d).double()
    with torch.no_grad():
        pe.p.copy_(torch.randn(k, d, dtype=torch.float64) * 3.0)
        pe.norm.weight.copy_(torch.rand(k, d, dtype=torch.float64) + 0.5)
        pe.norm.bias.copy_(torch.randn(k, d, dtype=torch.float64))
    x = torch.randn(2, k, d, dtype=torch.float64)
    s = x + pe.p
    mean = s.mean(dim=(1, 2), keepdim=True)
    var = ((s - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    expected = (s - mean) / torch.sqrt(var + pe.norm.eps) * pe.norm.weight + pe.norm.bias
    with torch.no_grad():
        torch.testing.assert_close(pe(x), expected, rtol=1e-12, atol=1e-12)


# --- validation metrics (val_metrics.json, the best-model choice) ---------------------------------


def _epoch_values(task: str, logits: np.ndarray, labels: np.ndarray, threshold) -> dict[str, float]:
    """Run the evaluator's metrics over one epoch of decollated outputs, as the bundles do."""
    from mri_slice_transfer.engine.metrics import flat_pred_label, make_additional_metrics, make_key_metric

    metrics = {
        **make_key_metric(task, threshold=threshold),
        **make_additional_metrics(task, threshold=threshold),
    }
    output = [
        {"pred": torch.tensor([z]), "label": torch.tensor([y])} for z, y in zip(logits, labels, strict=True)
    ]
    values = {}
    for name, metric in metrics.items():
        metric.reset()
        for i in range(0, len(output), 4):  # batches of 4
            metric.update(flat_pred_label(output[i : i + 4]))
        values[name] = float(metric.compute())
    return values


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_validation_metrics_are_those_of_the_validation_predictions(threshold) -> None:
    """val_* of an AD epoch = compute_metrics on its logits at the threshold used (tuned: the best one)."""
    from mri_slice_transfer.engine.metrics import compute_metrics

    rng = np.random.default_rng(5)
    labels = np.array([0, 1] * 9, dtype=np.float64)
    logits = (rng.normal(size=18) + 1.2 * labels).astype(np.float32)
    got = _epoch_values("adni_ad", logits, labels, threshold)
    if threshold is not None:
        assert got["val_threshold"] == pytest.approx(threshold)
    t = DecisionThreshold(got["val_threshold_logit"])  # the decision is made on logits
    expected = compute_metrics("adni_ad", logits.astype(np.float64), labels, t)
    thresholds = ("val_threshold", "val_threshold_logit")
    assert {k[4:]: v for k, v in got.items() if k not in thresholds} == pytest.approx(expected)
    if threshold is None:  # tuned: no cut between logits gives a higher balanced accuracy
        z = np.sort(logits.astype(np.float64))
        best = max(
            compute_metrics("adni_ad", logits.astype(np.float64), labels, float(_sigmoid(c)))[
                "balanced_accuracy"
            ]
            for c in np.r_[z[0] - 1, (z[1:] + z[:-1]) / 2, z[-1] + 1]
        )
        assert got["val_balanced_accuracy"] == pytest.approx(best) and best > 0.6


def test_brain_age_validation_metrics_are_mae_rmse_r_of_the_predictions() -> None:
    rng = np.random.default_rng(6)
    age = rng.uniform(50, 80, 13)
    pred = (age + rng.normal(0, 4, 13)).astype(np.float32)
    got = _epoch_values("brain_age", pred, age, None)
    err = pred.astype(np.float64) - age.astype(np.float32)
    assert got["val_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-6)
    assert got["val_rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-6)
    assert got["val_pearson_r"] == pytest.approx(np.corrcoef(pred, age)[0, 1], rel=1e-5)
    assert "val_threshold" not in got


def test_evaluator_best_metric_comparison_follows_the_task() -> None:
    """metric_cmp_fn: higher balanced accuracy is better; lower MAE is better (also against Ignite's -1)."""
    from mri_slice_transfer.engine.metrics import metric_cmp_fn

    ad, age = metric_cmp_fn("adni_ad"), metric_cmp_fn("brain_age")
    assert ad(0.8, 0.7) and not ad(0.7, 0.8) and not ad(0.7, 0.7)
    assert age(3.0, 4.0) and not age(5.0, 4.0) and not age(4.0, 4.0)
    assert age(9.0, -1) and ad(0.1, -1)  # Ignite's initial best_metric is -1


@pytest.mark.parametrize(
    "prob,cut,accepted",
    [
        (0.622459, 0.5, True),  # sigmoid(0.5) = 0.62245933 rounded to 6 decimals by hand: the same cut
        (0.0, -50.0, True),  # a saturated cut: sigmoid(-50) = 2e-22 shown as 0
        (0.7, 0.5, False),  # edited: the two disagree
        ("high", 0.5, False),  # not a number
    ],
)
def test_recorded_validation_threshold_is_checked_and_the_error_says_how_to_fix(
    tmp_path: Path, prob, cut: float, accepted: bool
) -> None:
    """models/model.json: evaluation and inference use val_threshold_logit when val_threshold agrees with
    it up to rounding; otherwise the error names the file, both values and what to do."""
    from mri_slice_transfer.engine.metrics import operating_threshold

    record = tmp_path / "model.json"
    metrics = {"val_threshold": prob, "val_threshold_logit": cut}
    record.write_text(json.dumps({"epoch": 3, "metrics": metrics}), encoding="utf-8")
    if accepted:
        assert operating_threshold("validation", record).logit == cut
        return
    with pytest.raises(ValueError, match=rf"model\.json: .*{prob}.*{cut}") as err:
        operating_threshold("validation", record)
    if isinstance(prob, float):
        assert str(err.value).endswith(
            "correct or delete val_threshold_logit, or pass --decision_threshold <probability>"
        )
    else:
        assert "must be a probability" in str(err.value)


def test_pearson_r_is_computed_for_a_narrow_age_range() -> None:
    """Brain age: predictions and ages spread by less than a year still get Pearson r (not NaN)."""
    from mri_slice_transfer.engine.metrics import regression_metrics

    age = np.array([70.1, 70.3, 70.4, 70.8, 70.9])
    pred = np.array([70.0, 70.5, 70.3, 70.6, 71.0])
    got = regression_metrics(pred, age)["pearson_r"]
    assert got == pytest.approx(np.corrcoef(pred, age)[0, 1], rel=1e-12) and got > 0.8


def test_probability_thresholds_0_and_1_are_the_extreme_cuts_and_others_are_refused() -> None:
    """A probability threshold of 0 calls every scan AD, 1 none; outside [0, 1] is an error with the value."""
    assert DecisionThreshold.from_probability(0.0).logit == -np.inf
    assert DecisionThreshold.from_probability(1.0).logit == np.inf
    with pytest.raises(ValueError, match=r"a probability threshold must be between 0 and 1, not 1\.5"):
        DecisionThreshold.from_probability(1.5)


@pytest.mark.parametrize("setting", ["abc", 0.0, 1.0, "1", -0.2])
def test_bundle_decision_threshold_setting_must_be_validation_or_inside_0_1(setting) -> None:
    """decision_threshold in a bundle config: 'validation' or a probability strictly between 0 and 1."""
    from mri_slice_transfer.engine.metrics import threshold_setting

    with pytest.raises(ValueError, match=rf"decision_threshold must be 'validation' .* got {setting!r}"):
        threshold_setting(setting)


def test_model_record_without_a_threshold_evaluates_at_0_5_with_validation(tmp_path: Path) -> None:
    """decision_threshold 'validation' on a model.json of an older version (no val_threshold): warned, 0.5."""
    from mri_slice_transfer.engine.metrics import operating_threshold

    record = tmp_path / "model.json"
    metrics = {"val_balanced_accuracy": 0.8, "val_f1": 0.7}
    record.write_text(json.dumps({"epoch": 3, "metrics": metrics}), encoding="utf-8")
    assert operating_threshold("validation", record).logit == 0.0


# --- grid table: a minimal results.csv ------------------------------------------------------------


def test_grid_table_of_a_minimal_results_file_keeps_file_order_and_reads_pretrained_text() -> None:
    """table.md from a results.csv without row / status / pooling columns and with pretrained as text
    ("Yes", " TRUE ", "false"): configurations in file order, seeds of one configuration pooled."""
    from mri_slice_transfer.experiments.tables import format_table

    def run(model: str, encoder: str, pretrained: str, seed: int, bacc: float) -> dict:
        metrics = {
            "test_balanced_accuracy": bacc,
            "test_f1": bacc - 0.1,
            "test_average_precision": bacc + 0.1,
        }
        config = {"model": model, "encoder": encoder, "axis": "sagittal", "pretrained": pretrained}
        return {**config, "seed": seed, **metrics}

    frame = pd.DataFrame(
        [
            run("2D-ResNet-18 (Mean)", "resnet18", "Yes", 1, 0.80),
            run("2D-CNN (Mean)", "cnn5", "false", 1, 0.70),
            run("2D-ResNet-18 (Mean)", "resnet18", " TRUE ", 2, 0.84),
        ]
    )
    rows = [line for line in format_table(frame, "adni_ad").splitlines() if line.startswith("| 2D")]
    assert rows == [
        "| 2D-ResNet-18 (Mean) | ✗ | ✓ | **82.00** ± 2.83 | **72.00** ± 2.83 | **92.00** ± 2.83 | - | 2 |",
        "| 2D-CNN (Mean) | ✗ | ✗ | 70.00 | 60.00 | 80.00 | - | 1 |",
    ]


def test_validation_metrics_read_batched_and_decollated_outputs_alike() -> None:
    """flat_pred_label: a custom evaluator without decollate gives the same (pred, label) as the bundles'."""
    from mri_slice_transfer.engine.metrics import flat_pred_label

    pred, label = torch.tensor([[0.2], [-1.5], [3.0]]), torch.tensor([[0.0], [1.0], [1.0]])
    batched = flat_pred_label({"pred": pred, "label": label})
    decollated = flat_pred_label([{"pred": p, "label": y} for p, y in zip(pred, label, strict=True)])
    for got in (batched, decollated):
        assert got[0].tolist() == pytest.approx([0.2, -1.5, 3.0]) and got[1].tolist() == [0.0, 1.0, 1.0]


def test_test_metrics_count_the_scans_they_are_over(tmp_path: Path) -> None:
    """test_metrics.json says over how many scans its numbers are and how many were skipped and why."""
    writer = PredictionWriter("adni_ad", str(tmp_path / "pred.csv"), str(tmp_path / "metrics.json"), 0.5)
    items = [
        {"subject_id": f"s{i}", "image_path": f"s{i}.nii", "label": torch.tensor([i % 2])} for i in range(5)
    ]
    items[1].update(status="error", error="ScanError: unreadable")  # a scan that could not be read
    logits = [-2.0, 0.0, float("nan"), 1.5, -0.5]  # scan 2: a non-finite network output
    output = [{"pred": torch.tensor([z])} for z in logits]
    writer.reset()
    writer.collect(SimpleNamespace(state=SimpleNamespace(batch=items, output=output)))
    metrics = writer.write()
    on_disk = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    counts = {k: on_disk[k] for k in ("n_scans", "n_errors", "n_skipped", "n_non_finite")}
    assert counts == {"n_scans": 3, "n_errors": 2, "n_skipped": 2, "n_non_finite": 1}
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score([0, 1, 0], [-2.0, 1.5, -0.5]))
