"""Calibrate the synthetic demo cohort: trivial baselines that must *not* solve the tasks.

Usage (the numbers in docs/demo_data.md come from these commands)::

    mri-slice-transfer demo-data --task adni_ad --n 200 --seed 0 --out /tmp/demo_ad200
    python scripts/calibrate_demo.py ad /tmp/demo_ad200 [bundles/adni_ad/eval/test_predictions.csv ...]
    mri-slice-transfer demo-data --task brain_age --n 200 --seed 0 --out /tmp/demo_age200
    python scripts/calibrate_demo.py age /tmp/demo_age200

``ad``: 5-fold cross-validated (subject-grouped, stratified) balanced accuracy and ROC AUC of
logistic regression on (a) total brain volume, (b) brain + tissue volume, sex and age, (c) the
z-scored image downsampled 8x (block means), and, as a sanity check that the signal *is* in the
anatomy, (d) two "oracle" anatomical measures (ventricle volume and medial-temporal intensity)
computed with knowledge of where the generator puts the effects. Then the same baselines fitted on
the cohort's train + val scans and scored on its test split, with 95 % subject-level bootstrap
intervals, beside the test predictions of any networks given (``eval/test_predictions.csv`` of a
bundle's ``evaluate.json``), so that baseline and network are compared on the same scans.
``figure OUT.png``: the CN-vs-AD / young-vs-old picture of docs/demo_data.md (nilearn plotting)::

    python scripts/calibrate_demo.py figure docs/img/demo_cohort.png

``age``: MAE of predicting the training mean age on val and test, and cross-validated ridge regression
on total brain volume, the 8x downsampled image and the oracle measures, beside the cross-validated MAE
of predicting the training folds' mean (same folds), the like-for-like reference for the ridge lines.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mri_slice_transfer.data.anatomy import _world, mtl_region
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE


def features(folder: Path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    x, y, z = _world(TEMPLATE_SHAPE, TEMPLATE_AFFINE)
    box = (np.abs(x) < 30) & (y > -45) & (y < 30) & (z > -5) & (z < 35)
    mtl = mtl_region(np.stack([x, y, z])) > 0.3
    tbv, tissue, down, vent, hip = [], [], [], [], []
    for rel in frame["image"]:
        img = np.asarray(nib.load(folder / rel).dataobj, dtype=np.float32)
        brain = img > 0
        med = np.median(img[brain])
        tbv.append(brain.sum() * 8e-3)  # ml
        tissue.append((img > 0.6 * med).sum() * 8e-3)
        zimg = (img - img.mean()) / img.std()
        pad = np.pad(zimg, [(0, (-s) % 8) for s in zimg.shape])
        down.append(
            pad.reshape(pad.shape[0] // 8, 8, pad.shape[1] // 8, 8, pad.shape[2] // 8, 8)
            .mean((1, 3, 5))
            .ravel()
        )
        vent.append(((img < 0.6 * med) & brain & box).sum() * 8e-3)
        hip.append(img[mtl & brain].mean() / med)
    return {
        "tbv": np.array(tbv)[:, None],
        "tbv_tissue": np.c_[tbv, tissue],
        "down8": np.array(down),
        "oracle": np.c_[vent, hip],
        "vent": np.array(vent),
    }


def _logistic() -> object:
    return make_pipeline(
        StandardScaler(), LogisticRegressionCV(Cs=10, max_iter=5000, class_weight="balanced")
    )


def _scores(y: np.ndarray, logit: np.ndarray, groups: np.ndarray, threshold: Any = 0.5) -> str:
    """Balanced accuracy (at a decision threshold: a DecisionThreshold or a probability) and ROC AUC
    with subject-level bootstrap CIs."""
    from mri_slice_transfer.engine.metrics import classification_metrics
    from mri_slice_transfer.experiments.bootstrap import bootstrap_ci

    m = classification_metrics(logit, y, threshold)
    ci = bootstrap_ci("adni_ad", logit, y, groups, n_bootstrap=2000, seed=0, threshold=threshold)
    b, a = ci["balanced_accuracy"], ci["roc_auc"]
    return (
        f"balanced accuracy {m['balanced_accuracy']:.3f} [{b[0]:.2f}, {b[1]:.2f}]  "
        f"ROC AUC {m['roc_auc']:.3f} [{a[0]:.2f}, {a[1]:.2f}]"
    )


def ad_report(folder: Path, frame: pd.DataFrame, feats: dict, predictions: list[str]) -> None:
    """Cross-validated baselines, then baselines and networks on the bundle's own test split."""
    y = (frame["dx"] == "AD").to_numpy().astype(int)
    groups = frame["subject_id"].to_numpy()
    feats["tbv_tissue_sex_age"] = np.c_[feats["tbv_tissue"], frame["sex"] == "M", frame["age"]]
    names = ("tbv", "tbv_tissue", "tbv_tissue_sex_age", "down8", "oracle")
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    print(f"{len(frame)} scans, {frame.subject_id.nunique()} subjects, {y.mean():.0%} AD scans")
    print("5-fold cross-validation over all scans (subject-grouped, stratified):")
    for name in names:
        logit = cross_val_predict(
            _logistic(), feats[name], y, cv=cv, groups=groups, method="decision_function"
        )
        print(f"  logistic regression on {name:20s} {_scores(y, logit, groups)}")
    # The bundle's split: fit on train + val (more data than the network trains on), score test.
    fit = frame["split"].isin(["train", "val"]).to_numpy()
    test = (frame["split"] == "test").to_numpy()
    print(
        f"test split ({test.sum()} scans, {y[test].sum()} AD; baselines fitted on train + val, "
        f"{fit.sum()} scans; 95% subject-level bootstrap CIs):"
    )
    for name in names:
        logit = _logistic().fit(feats[name][fit], y[fit]).decision_function(feats[name][test])
        print(f"  logistic regression on {name:20s} {_scores(y[test], logit, groups[test])}")
    for csv in predictions:
        # a bundle's eval/test_predictions.csv (evaluate.json) on this cohort's test split
        from mri_slice_transfer.experiments.bootstrap import predictions_arrays

        logit, label, subjects = predictions_arrays("adni_ad", csv)
        metrics = Path(csv).with_name("test_metrics.json")  # written beside it by evaluate.json
        from mri_slice_transfer.engine.metrics import as_threshold, metrics_threshold

        t = as_threshold(0.5)
        if metrics.is_file():  # the logit cut (or, written by older versions, the probability)
            t = metrics_threshold(json.loads(metrics.read_text(encoding="utf-8")))
        print(f"  network {csv}: {len(label)} scans")
        print(f"    at its threshold {t.probability:.3f}: {_scores(label, logit, subjects, t)}")
        if t.logit != 0.0:
            print(f"    at 0.5:             {_scores(label, logit, subjects)}")
    v = feats["vent"]
    cn, ad = v[y == 0], v[y == 1]
    r = np.corrcoef(cn, frame["age"][y == 0])[0, 1]
    print(f"ventricle ml: CN {cn.mean():.1f} +- {cn.std():.1f}, AD {ad.mean():.1f} +- {ad.std():.1f}; ")
    print(f"corr of ventricle volume with age (CN) {r:.2f}")


def age_report(frame: pd.DataFrame, feats: dict) -> None:
    """MAE of the training mean on val/test and cross-validated ridge regressions."""
    groups = frame["subject_id"].to_numpy()
    age = frame["age"].to_numpy()
    train = frame["split"] == "train"
    for split in ("val", "test"):
        sel = frame["split"] == split
        mae = mean_absolute_error(age[sel], np.full(sel.sum(), age[train].mean()))
        print(f"predict the training mean ({age[train].mean():.2f}): {split} MAE {mae:.2f} years")
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    bins = np.digitize(age, np.quantile(age, [0.25, 0.5, 0.75]))
    folds = list(cv.split(age, bins, groups))
    # the reference for the ridge lines: the training folds' mean age, on the same folds
    pred = cross_val_predict(DummyRegressor(strategy="mean"), np.zeros((len(age), 1)), age, cv=folds)
    print(f"predict the training folds' mean  cross-validated MAE {mean_absolute_error(age, pred):.2f} years")
    for name in ("tbv", "down8", "oracle"):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        pred = cross_val_predict(model, feats[name], age, cv=folds)
        print(f"ridge regression on {name:8s} cross-validated MAE {mean_absolute_error(age, pred):.2f} years")


def main(kind: str, folder: str, predictions: list[str]) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    folder = Path(folder)
    frame = pd.read_csv(folder / "participants.csv")
    feats = features(folder, frame)
    if kind == "ad":
        ad_report(folder, frame, feats, predictions)
    else:
        age_report(frame, feats)


def figure(out: str) -> None:
    """Columns: one subject as CN and as AD at 74; another as CN at 58 and at 86. Rows: three views."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mri_slice_transfer.data.anatomy import ScanParams
    from mri_slice_transfer.data.synthetic import synthesize_scan

    cases = [
        ("CN, 74 y", ScanParams(74.0, "CN", "F", "site-A", subject_seed=5, scan_seed=11)),
        ("AD, 74 y\n(same subject)", ScanParams(74.0, "AD", "F", "site-A", subject_seed=5, scan_seed=11)),
        ("CN, 58 y", ScanParams(58.0, "CN", "M", "site-B", subject_seed=8, scan_seed=12)),
        ("CN, 86 y\n(same subject)", ScanParams(86.0, "CN", "M", "site-B", subject_seed=8, scan_seed=12)),
    ]
    inv = np.linalg.inv(TEMPLATE_AFFINE)
    i, j, k = (int(round(v)) for v in inv[:3, :3] @ [-26.0, -22.0, 14.0] + inv[:3, 3])
    views = [
        ("sagittal x=-26 mm (hippocampus)", lambda d: d[i, :, :].T),
        ("coronal y=-22 mm", lambda d: d[:, j, :].T),
        ("axial z=+14 mm (ventricles)", lambda d: d[:, :, k].T),
    ]
    fig, axes = plt.subplots(len(views), len(cases), figsize=(3.2 * len(cases), 3.0 * len(views)))
    for c, (title, params) in enumerate(cases):
        data = synthesize_scan(params, "template")[0].astype(np.float32)
        vmax = float(np.percentile(data[data > 0], 99.5))
        for r, (vname, cut) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(cut(data), origin="lower", cmap="gray", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=12)
            if c == 0:
                ax.set_ylabel(vname, fontsize=10)
    fig.suptitle("Synthetic demo cohort (template space, 2 mm); coronal and axial: R on the left")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    if sys.argv[1] == "figure":
        figure(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3:])
