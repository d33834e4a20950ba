"""Rules that hold for every input, checked on random inputs with Hypothesis.

- the engine's metrics equal scikit-learn's (and NumPy's) on random labels and scores;
- a split never puts one subject in two splits, and the leakage guard refuses a planted duplicate;
- the exact resampling path undoes any axis permutation / flip of the storage orientation bit for bit;
- a folded 1-channel conv1 computes what the 3-channel conv1 on repeated slices computes.

Examples are few (fast suite) and derandomised (the same examples on every run, so a mutation-testing
run and CI see the same cases); there is no example database.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from sklearn import metrics as skm

from mri_slice_transfer.data.datalist import check_leakage, subject_leakage_problems
from mri_slice_transfer.engine.metrics import classification_metrics, regression_metrics
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.networks.encoders import ResNetEncoder, convert_in_channels_mode
from mri_slice_transfer.split import split_by_subject
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE
from mri_slice_transfer.transforms.spatial import resample_to_template

FAST = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- metrics against scikit-learn ---------------------------------------------------------------

_logit = st.floats(-8.0, 8.0, allow_nan=False).map(lambda v: round(v, 1))  # rounding makes ties common
_scans = st.lists(st.tuples(st.integers(0, 1), _logit), min_size=2, max_size=40)


@FAST
@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn on one-class samples
@given(scans=_scans, threshold=st.sampled_from([0.5, 0.2, 0.73]))
def test_classification_metrics_equal_sklearn(scans, threshold) -> None:
    labels = np.array([y for y, _ in scans])
    logits = np.array([z for _, z in scans])
    got = classification_metrics(logits, labels, threshold)
    prob = 1.0 / (1.0 + np.exp(-logits))
    hat = (prob >= threshold).astype(int)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, hat))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, hat, zero_division=0))
    if len(set(labels.tolist())) == 2:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, prob))
        assert got["average_precision"] == pytest.approx(skm.average_precision_score(labels, prob))
        # ROC AUC is the probability that an AD scan outranks a CN scan (ties count half)
        d = logits[labels == 1][:, None] - logits[labels == 0][None, :]
        assert got["roc_auc"] == pytest.approx(np.mean((d > 0) + 0.5 * (d == 0)))
    else:
        assert math.isnan(got["roc_auc"]) and math.isnan(got["average_precision"])


_age = st.floats(20.0, 95.0, allow_nan=False)


@FAST
@given(pairs=st.lists(st.tuples(_age, _age), min_size=1, max_size=40))
def test_regression_metrics_equal_sklearn(pairs) -> None:
    pred = np.array([p for p, _ in pairs])
    age = np.array([a for _, a in pairs])
    got = regression_metrics(pred, age)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(age, pred))
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(age, pred)))
    if len(age) > 1 and np.std(pred) > 0 and np.std(age) > 0:
        assert got["pearson_r"] == pytest.approx(np.corrcoef(pred, age)[0, 1], abs=1e-9)
    else:
        assert math.isnan(got["pearson_r"])


# --- subject-level splits and the leakage guard -------------------------------------------------


@st.composite
def _split_tables(draw) -> pd.DataFrame:
    """One row per scan: 12-40 subjects with 1-3 scans each, random diagnoses and ages."""
    n = draw(st.integers(12, 40))
    rows = []
    for s in range(n):
        dx = draw(st.sampled_from(["AD", "CN"]))
        age = draw(st.integers(55, 90))
        for k in range(draw(st.integers(1, 3))):
            rows.append(
                {"subject_id": f"sub-{s:03d}", "session_id": f"ses-{k + 1}", "dx": dx, "age": age + k}
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=draw(st.integers(0, 9))).reset_index(drop=True)


@FAST
@given(frame=_split_tables(), seed=st.integers(0, 1000), stratify=st.sampled_from(["auto", "dx+age", "none"]))
def test_split_never_shares_a_subject_and_guard_refuses_a_planted_duplicate(frame, seed, stratify) -> None:
    res = split_by_subject(frame, "adni_ad", seed=seed, stratify=stratify)
    owners = {}
    for split, part in res.frames.items():
        for sub in set(part["subject_id"]):
            assert owners.setdefault(sub, split) == split, f"{sub} in {owners[sub]} and {split}"
    assert sorted(pd.concat(res.frames.values()).index) == list(frame.index)  # every scan once
    assert subject_leakage_problems(res.frames) == []
    # plant one scan of a training subject in the test list: refused, naming that subject
    sub = res.frames["train"]["subject_id"].iloc[seed % len(res.frames["train"])]
    leaked = dict(res.frames)
    leaked["test"] = pd.concat(
        [res.frames["test"], res.frames["train"][res.frames["train"].subject_id == sub][:1]]
    )
    assert len(subject_leakage_problems(leaked)) == 1
    with pytest.raises(DataListError) as info:  # the subject, and its image file, in two splits
        check_leakage(leaked)
    assert any(repr(sub) in p for p in info.value.problems)


# --- orientation invariance of the exact resampling path ----------------------------------------

_VOLUME = np.random.default_rng(0).normal(size=TEMPLATE_SHAPE).astype(np.float32)


@FAST
@given(perm=st.permutations([0, 1, 2]), flips=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_exact_path_undoes_any_axis_permutation_and_flip(perm, flips) -> None:
    """The same voxels stored in another axis order / direction come back bit-exactly on the template."""
    stored = np.transpose(_VOLUME, perm)  # stored axis k is template axis perm[k]
    to_template = np.zeros((4, 4))  # stored voxel index -> template voxel index
    to_template[3, 3] = 1.0
    for k, (a, flip) in enumerate(zip(perm, flips, strict=True)):
        if flip:
            stored = np.flip(stored, axis=k)
        to_template[a, k] = -1.0 if flip else 1.0
        to_template[a, 3] = TEMPLATE_SHAPE[a] - 1 if flip else 0
    img = MetaTensor(
        torch.from_numpy(stored.copy()[None]), affine=torch.from_numpy(TEMPLATE_AFFINE @ to_template)
    )
    out = resample_to_template(img)
    assert out.meta["resample_path"] == "exact"
    assert np.array_equal(out[0].numpy(), _VOLUME)


# --- folded conv1 == repeated input ---------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_pair() -> tuple[ResNetEncoder, ResNetEncoder]:
    torch.manual_seed(0)
    repeat = ResNetEncoder("resnet18", in_channels_mode="repeat").double().eval()
    torch.manual_seed(0)  # the same initialisation for every layer after the stem
    fold = ResNetEncoder("resnet18", in_channels_mode="fold").double().eval()
    return repeat, fold


@settings(FAST, max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 10.0))
def test_fold_equals_repeat_for_random_conv1_weights(resnet_pair, seed, scale) -> None:
    repeat, fold = resnet_pair
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(repeat.backbone.conv1.weight.shape, generator=gen, dtype=torch.float64) * scale
    with torch.no_grad():
        repeat.backbone.conv1.weight.copy_(weight)
    stem = {"backbone.conv1.weight": weight}  # the rest of both encoders is the same seeded init
    with torch.no_grad():
        fold.backbone.conv1.weight.copy_(convert_in_channels_mode(stem, "fold")["backbone.conv1.weight"])
    x = torch.randn(2, 1, 16, 12, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold(x), repeat(x), rtol=1e-10, atol=1e-10)
    back = convert_in_channels_mode({"conv1.weight": fold.backbone.conv1.weight}, "repeat")["conv1.weight"]
    torch.testing.assert_close(back.sum(dim=1), weight.sum(dim=1), rtol=1e-12, atol=1e-12)
