"""Unit tests of mri_slice_transfer.engine helpers (fast, no training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mri_slice_transfer.engine import as_bool, as_optional, as_pretrained, resolve_inputs, scaled_size
from mri_slice_transfer.engine.bundle_root import _from_argv, root_from_config_file
from mri_slice_transfer.engine.datasets import DataSource
from mri_slice_transfer.engine.handlers import BestModelSaver
from mri_slice_transfer.engine.io import atomic_torch_save
from mri_slice_transfer.engine.losses import make_loss
from mri_slice_transfer.engine.metrics import classification_metrics, regression_metrics
from mri_slice_transfer.engine.precision import AutocastInferer, precision_label
from mri_slice_transfer.engine.seeding import rng_state, set_rng_state


def test_bundle_root_from_config_paths(tmp_path) -> None:
    cfg = tmp_path / "b" / "configs" / "train.json"
    assert root_from_config_file(str(cfg)) == (tmp_path / "b").resolve()
    assert (
        root_from_config_file(f"['{cfg}', '{tmp_path}/b/configs/evaluate.json']")
        == (tmp_path / "b").resolve()
    )
    assert root_from_config_file(str(tmp_path / "flat" / "train.json")) == (tmp_path / "flat").resolve()
    assert _from_argv([sys.executable, "run", "--config_file", str(cfg)]) == (tmp_path / "b").resolve()


def test_cli_values() -> None:
    assert as_bool("true") and as_bool("True") and not as_bool("false") and not as_bool(None)
    with pytest.raises(ValueError):
        as_bool("maybe")
    assert as_optional("null") is None and as_optional("") is None and as_optional("/data") == "/data"
    assert as_pretrained("false") is False and as_pretrained("auto") == "auto" and as_pretrained(True) is True


def test_metrics() -> None:
    m = classification_metrics(np.array([-2.0, 2.0, 3.0, -1.0]), np.array([0, 1, 1, 1]))
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(1.0)
    assert math.isnan(classification_metrics(np.array([1.0, 2.0]), np.array([1, 1]))["roc_auc"])
    r = regression_metrics(np.array([60.0, 70.0, 80.0]), np.array([62.0, 70.0, 77.0]))
    assert r["mae"] == pytest.approx(5 / 3) and r["pearson_r"] > 0.9


def test_tuned_threshold_maximises_balanced_accuracy_and_is_parsed(tmp_path) -> None:
    from mri_slice_transfer.engine.metrics import operating_threshold, threshold_setting, tune_threshold

    # every logit is positive (offset), but the classes are separated between 1.0 and 2.0
    logits, labels = np.array([0.2, 0.5, 1.0, 2.0, 2.5, 3.0]), np.array([0, 0, 0, 1, 1, 1])
    assert classification_metrics(logits, labels)["balanced_accuracy"] == 0.5  # at 0.5: all AD
    t = tune_threshold(logits, labels)
    assert t.logit == 1.5  # half-way between 1.0 and 2.0 in logits
    assert t.probability == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert classification_metrics(logits, labels, t)["balanced_accuracy"] == 1.0
    # overlapping classes: no cut beats the tuned one
    rng = np.random.default_rng(0)
    z, y = np.r_[rng.normal(0, 1, 40), rng.normal(1, 1, 15)], np.r_[np.zeros(40), np.ones(15)]
    best = classification_metrics(z, y, tune_threshold(z, y))["balanced_accuracy"]
    for p in np.linspace(0.01, 0.99, 99):
        assert classification_metrics(z, y, p)["balanced_accuracy"] <= best + 1e-12
    assert tune_threshold(np.array([1.0, 2.0]), np.array([1, 1])).probability == 0.5  # one class: fixed
    assert threshold_setting("validation") is None and threshold_setting("0.3") == 0.3
    with pytest.raises(ValueError, match="'validation' or a probability"):
        threshold_setting(1.5)
    record = tmp_path / "model.json"
    assert operating_threshold("validation", record).logit == 0.0  # no record yet: warned, fixed 0.5
    # a record of an older version: only the probability, converted to its logit
    record.write_text(json.dumps({"epoch": 3, "metrics": {"val_threshold": 0.62}}), encoding="utf-8")
    assert operating_threshold("validation", record).probability == pytest.approx(0.62)
    assert operating_threshold("validation", record).logit == pytest.approx(math.log(0.62 / 0.38))
    assert operating_threshold(0.4, record).probability == pytest.approx(0.4)


#: Validation logits far beyond float64 sigmoid resolution: exp(800) overflows, sigmoid(40) == 1.0.
SATURATED = [
    (np.array([-900.0, -850.0, -800.0, -760.0]), -825.0, 0.0),
    (np.array([40.0, 45.0, 55.0, 60.0]), 50.0, 1.0),
]


@pytest.mark.parametrize(("logits", "cut", "probability"), SATURATED)
def test_threshold_is_tuned_and_applied_in_logit_space(logits, cut, probability) -> None:
    from mri_slice_transfer.engine.metrics import make_additional_metrics, tune_threshold

    labels = np.array([0, 0, 1, 1])
    t = tune_threshold(logits, labels)
    assert (t.logit, t.probability) == (cut, probability)
    metrics = classification_metrics(logits, labels, t)
    assert metrics["balanced_accuracy"] == metrics["f1"] == metrics["roc_auc"] == 1.0
    # what training records: the probability for people and the logit cut that decisions use
    epoch = make_additional_metrics("adni_ad")
    assert {"val_threshold", "val_threshold_logit"} <= set(epoch)


def test_tied_cuts_give_the_middle_one() -> None:
    from mri_slice_transfer.engine.metrics import tune_threshold

    z = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert tune_threshold(z, np.array([0, 1, 0, 1, 0, 1])).logit == 2.5  # of 0.5, 2.5, 4.5
    assert tune_threshold(z + 1000.0, np.array([0, 1, 0, 1, 0, 1])).logit == 1002.5


def test_recorded_logit_cut_is_used_and_checked(tmp_path) -> None:
    from mri_slice_transfer.engine.metrics import operating_threshold

    record = tmp_path / "model.json"
    metrics = {"val_threshold": 1.0, "val_threshold_logit": 50.0}
    record.write_text(json.dumps({"epoch": 2, "metrics": metrics}), encoding="utf-8")
    assert operating_threshold("validation", record).logit == 50.0
    metrics["val_threshold"] = 0.3  # edited by hand: the two disagree
    record.write_text(json.dumps({"epoch": 2, "metrics": metrics}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"model\.json: val_threshold 0\.3 and val_threshold_logit 50\.0"):
        operating_threshold("validation", record)


def test_saturated_outputs_are_predicted_and_bootstrapped_exactly(tmp_path) -> None:
    from mri_slice_transfer.engine.metrics import DecisionThreshold, metrics_threshold
    from mri_slice_transfer.engine.predictions import PredictionWriter
    from mri_slice_transfer.experiments.bootstrap import bootstrap_ci, bootstrap_from_predictions

    writer = PredictionWriter(
        "adni_ad", str(tmp_path / "p.csv"), str(tmp_path / "m.json"), DecisionThreshold(50.0)
    )
    for i, (z, y) in enumerate([(40.0, 0), (45.0, 0), (55.0, 1), (60.0, 1)]):
        item = {"subject_id": f"s{i}", "image_path": f"{i}.nii", "label": torch.tensor([float(y)])}
        writer.rows.append(writer._row(item, torch.tensor([z])))
    metrics = writer.write()
    assert metrics["threshold"] == 1.0 and metrics["threshold_logit"] == 50.0
    assert metrics["balanced_accuracy"] == metrics["roc_auc"] == 1.0
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["predicted"].tolist() == ["CN", "CN", "AD", "AD"] and (table["probability"] == 1.0).all()
    # the grid bootstraps at the run's threshold, read back from test_metrics.json
    threshold = metrics_threshold(json.loads((tmp_path / "m.json").read_text(encoding="utf-8")))
    row = bootstrap_from_predictions("adni_ad", tmp_path / "p.csv", 50, 0, threshold)
    assert row["test_balanced_accuracy_ci_low"] == row["test_roc_auc_ci_low"] == 1.0
    exact = bootstrap_ci("adni_ad", table["logit"], table["label"], None, 50, exact=True, threshold=threshold)
    assert exact["balanced_accuracy"] == (1.0, 1.0)
    assert metrics_threshold({"threshold": 0.5}).logit == 0.0  # a test_metrics.json of an older version


def test_best_model_saver_lower_is_better(tmp_path) -> None:
    saver = BestModelSaver(torch.nn.Linear(2, 1), str(tmp_path / "m.pt"), "val_mae", lower_is_better=True)
    assert saver.improved(5.0)
    saver.best = 5.0
    assert saver.improved(4.0) and not saver.improved(6.0) and not saver.improved(float("nan"))


def test_atomic_save_and_rng_roundtrip(tmp_path) -> None:
    state = rng_state()
    a = torch.rand(3)
    path = atomic_torch_save({"rng": state}, tmp_path / "ck.pt")
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), a)
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path) -> None:
    """Two runs that end with equal weights write equal files, so model.json's sha256 compares runs."""
    weights = torch.nn.Linear(4, 2).state_dict()
    first = atomic_torch_save(weights, tmp_path / "a" / "model.pt")
    second = atomic_torch_save(weights, tmp_path / "b" / "model.pt")
    assert first.read_bytes() == second.read_bytes()
    weights["bias"] += 1
    assert atomic_torch_save(weights, tmp_path / "c.pt").read_bytes() != first.read_bytes()


def test_autocast_inferer_returns_fp32() -> None:
    net = torch.nn.Linear(4, 1)
    out = AutocastInferer(enabled=True)(torch.randn(2, 4), net)
    assert out.dtype == torch.float32
    assert "bf16" in precision_label(True, "cpu") and precision_label(False, "cpu") == "fp32 (amp false)"


def test_loss_shapes() -> None:
    loss = make_loss("adni_ad")(torch.zeros(3, 1), torch.ones(3, 1))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-4)
    assert make_loss("brain_age")(
        torch.full((2, 1), 60.0), torch.tensor([[62.0], [58.0]])
    ).item() == pytest.approx(4.0)


def test_class_balanced_loss_weights_ad_terms() -> None:
    frame = pd.DataFrame({"label": [0.0, 0.0, 0.0, 1.0], "image": ["a"] * 4, "subject_id": list("abcd")})
    source = DataSource("adni_ad", {"train": frame}, False, Path("."))
    assert source.positive_weight("train") == pytest.approx(3.0)
    plain, balanced = make_loss("adni_ad"), make_loss("adni_ad", pos_weight=3.0)
    pred = torch.zeros(2, 1)
    # an AD scan costs 3x as much, a CN scan the same
    assert balanced(pred, torch.ones(2, 1)).item() == pytest.approx(3 * plain(pred, torch.ones(2, 1)).item())
    assert balanced(pred, torch.zeros(2, 1)).item() == pytest.approx(plain(pred, torch.zeros(2, 1)).item())
    with pytest.raises(ValueError, match="both classes"):
        DataSource("adni_ad", {"train": frame.assign(label=0.0)}, False, Path(".")).positive_weight()
    with pytest.raises(ValueError, match="AD task"):
        make_loss("brain_age", pos_weight=2.0)


def test_resolve_inputs(tmp_path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.nii").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [r["image"].split("/")[-1] for r in resolve_inputs(str(tmp_path))] == ["a.nii.gz", "b.nii"]
    assert len(resolve_inputs(str(tmp_path / "*.nii"))) == 1
    (tmp_path / "list.csv").write_text("image,subject_id\na.nii.gz,s1\nmissing.nii,s2\n")
    rows = resolve_inputs(str(tmp_path / "list.csv"))
    assert rows[1]["subject_id"] == "s2" and rows[1]["image"].endswith("missing.nii")
    with pytest.raises(ValueError):
        resolve_inputs(str(tmp_path / "nothing*.nii"))


def test_scaled_size() -> None:
    assert scaled_size(1.0) == (91, 109, 91)
    assert scaled_size(0.5) == (46, 54, 46)


def test_resized_chain_is_cached(tmp_path) -> None:
    """The demo's half-size chain must stay cacheable (a nested Compose would leave the cache empty)."""
    import nibabel as nib
    from monai.data import CacheDataset

    from mri_slice_transfer.engine.resize import with_resize
    from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE
    from mri_slice_transfer.transforms import get_train_transforms

    data = np.zeros(TEMPLATE_SHAPE, np.float32)
    data[20:70, 20:90, 20:70] = np.random.default_rng(0).uniform(1, 2, (50, 70, 50))
    nib.save(nib.Nifti1Image(data, TEMPLATE_AFFINE), tmp_path / "scan.nii.gz")
    chain = with_resize(get_train_transforms(), 0.5)
    ds = CacheDataset([{"image": str(tmp_path / "scan.nii.gz")}], chain, cache_rate=1.0, progress=False)
    cached = ds._cache[0]
    assert not isinstance(cached, int), "CacheDataset cached nothing"
    assert tuple(cached["image"].shape) == (1, *scaled_size(0.5))


def test_channels_last_network_for_every_encoder() -> None:
    from mri_slice_transfer.engine.network import build_network

    net = build_network(channels_last=True, encoder="conv3d", spatial_size=(16, 16, 16))
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 1)
    net = build_network(channels_last=True, encoder="resnet18", spatial_size=(8, 32, 32), pretrained=False)
    conv1 = net.encoder.backbone.layer1[0].conv1.weight  # 64 in-channels: layouts differ
    assert conv1.is_contiguous(memory_format=torch.channels_last) and not conv1.is_contiguous()


_RSS_AFTER_FREE = """
import sys, torch
from mri_slice_transfer.engine import keep_freed_memory
from mri_slice_transfer.bench.process import rss_mb
applied = keep_freed_memory(sys.argv[1] == "1")
before = rss_mb()
x = torch.ones(64 * 2**20)  # 256 MB, written
del x
print(applied, rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
@pytest.mark.parametrize("enabled", [False, True])
def test_keep_freed_memory_keeps_a_freed_large_tensor_resident(enabled):
    out = subprocess.run(
        [sys.executable, "-c", _RSS_AFTER_FREE, "1" if enabled else "0"],
        capture_output=True, text=True, check=True, encoding="utf-8",
    ).stdout.split()  # fmt: skip
    applied, kept_mb = out[0] == "True", float(out[1])
    assert applied is enabled
    # glibc's default returns the 256 MB mapping at once; with the setting the heap keeps it for reuse
    assert (kept_mb > 200) if enabled else (kept_mb < 50)


def test_recompute_batchnorm_stats_gives_the_data_statistics():
    from mri_slice_transfer.engine.precise_bn import recompute_batchnorm_stats

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    net.eval()
    batches = [{"image": torch.randn(2, 1, 6, 6) * 3 + 1} for _ in range(3)]
    with torch.no_grad():
        feats = torch.cat([net[0](b["image"]) for b in batches])  # [6, 4, 4, 4]
    rng = torch.random.get_rng_state()
    used = recompute_batchnorm_stats(net, batches + batches, num_batches=3, device="cpu")
    assert used == 3
    bn = net[1]
    # cumulative average over equal batches: mean of the batch means = the mean over all 3 batches
    torch.testing.assert_close(bn.running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    per_batch_var = torch.stack([f.var(dim=(0, 2, 3)) for f in feats.split(2)])  # unbiased, as BN keeps
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(0), rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training and not bn.training  # restored
    assert torch.equal(torch.random.get_rng_state(), rng)  # the training data order is unchanged


def test_precise_batchnorm_handler_runs_when_the_evaluator_starts():
    from ignite.engine import Engine

    from mri_slice_transfer.engine import PreciseBatchNorm
    from mri_slice_transfer.networks import SliceSetNet

    torch.manual_seed(0)
    net = SliceSetNet(encoder="resnet18", spatial_size=(16, 20, 12))
    loader = [{"image": torch.randn(2, 1, 16, 20, 12)} for _ in range(2)]
    seen = []
    evaluator = Engine(lambda engine, batch: seen.append(net.encoder.backbone.bn1.running_mean.clone()))
    PreciseBatchNorm(loader, net, "cpu", num_batches=2).attach(evaluator)
    before = net.encoder.backbone.bn1.running_mean.clone()
    evaluator.run([0])
    assert not torch.equal(seen[0], before)  # recomputed before the first validation batch
    assert net.encoder.backbone.bn1.num_batches_tracked == 2

    off = SliceSetNet(encoder="resnet18", spatial_size=(16, 20, 12))
    state = {k: v.clone() for k, v in off.state_dict().items()}
    evaluator = Engine(lambda engine, batch: None)
    PreciseBatchNorm(loader, off, "cpu", num_batches=0).attach(evaluator)
    evaluator.run([0])
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="num_batches"):
        PreciseBatchNorm(loader, off, "cpu", num_batches=-1)


def test_lr_schedules_and_resume_of_the_cosine() -> None:
    from mri_slice_transfer.engine import make_lr_scheduler

    def run(schedule: str, epochs: int, steps: int, resume_from: tuple | None = None) -> tuple:
        """Learning rate of each of ``steps`` epochs, then the (optimizer, scheduler) states."""
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make_lr_scheduler(opt, schedule, epochs)
        if resume_from is not None:  # as FullCheckpoint.load: optimizer first, then the extras
            opt.load_state_dict(resume_from[0])
            sched.load_state_dict(resume_from[1])
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out, (opt.state_dict(), sched.state_dict())

    assert run("constant", 4, 4)[0] == [0.1] * 4
    cos = run("cosine", 4, 4)[0]
    assert cos == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert all(a > b for a, b in zip(cos, cos[1:], strict=False)) and cos[-1] > 0
    # stop after 2 of 4 epochs, resume from the saved states: the same curve continues
    _, states = run("cosine", 4, 2)
    assert run("cosine", 4, 2, resume_from=states)[0] == pytest.approx(cos[2:])
    with pytest.raises(ValueError, match="constant, cosine"):
        make_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "step", 4)
