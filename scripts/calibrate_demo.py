"""Calibrate the synthetic demo cohort: trivial baselines that must *not* solve the tasks.

Usage (the numbers in docs/demo_data.md come from these commands)::

    mri-slice-transfer demo-data --task adni_ad --n 200 --seed 0 --out /tmp/demo_ad200
    python scripts/calibrate_demo.py ad /tmp/demo_ad200
    mri-slice-transfer demo-data --task brain_age --n 200 --seed 0 --out /tmp/demo_age200
    python scripts/calibrate_demo.py age /tmp/demo_age200

``ad``: 5-fold cross-validated (subject-grouped, stratified) balanced accuracy of logistic regression
on (a) total brain volume, (b) brain + tissue volume, sex and age, (c) the z-scored image downsampled
8x (block means), and, as a sanity check that the signal *is* in the anatomy, (d) two "oracle"
anatomical measures (ventricle volume and medial-temporal intensity) computed with knowledge of where
the generator puts the effects.
``figure OUT.png``: the CN-vs-AD / young-vs-old picture of docs/demo_data.md (nilearn plotting)::

    python scripts/calibrate_demo.py figure docs/img/demo_cohort.png

``age``: MAE of predicting the training mean age on val and test, and cross-validated ridge regression
on the 8x downsampled image.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
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


def main(kind: str, folder: str) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    folder = Path(folder)
    frame = pd.read_csv(folder / "participants.csv")
    feats = features(folder, frame)
    groups = frame["subject_id"].to_numpy()
    if kind == "ad":
        y = (frame["dx"] == "AD").to_numpy().astype(int)
        feats["tbv_tissue_sex_age"] = np.c_[feats["tbv_tissue"], frame["sex"] == "M", frame["age"]]
        cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
        print(f"{len(frame)} scans, {frame.subject_id.nunique()} subjects, {y.mean():.0%} AD scans")
        for name in ("tbv", "tbv_tissue", "tbv_tissue_sex_age", "down8", "oracle"):
            model = make_pipeline(
                StandardScaler(), LogisticRegressionCV(Cs=10, max_iter=5000, class_weight="balanced")
            )
            pred = cross_val_predict(model, feats[name], y, cv=cv, groups=groups)
            print(
                f"logistic regression on {name:20s} balanced accuracy {balanced_accuracy_score(y, pred):.3f}"
            )
        v = feats["vent"]
        cn, ad = v[y == 0], v[y == 1]
        r = np.corrcoef(cn, frame["age"][y == 0])[0, 1]
        print(f"ventricle ml: CN {cn.mean():.1f} +- {cn.std():.1f}, AD {ad.mean():.1f} +- {ad.std():.1f}; ")
        print(f"corr of ventricle volume with age (CN) {r:.2f}")
    else:
        age = frame["age"].to_numpy()
        train = frame["split"] == "train"
        for split in ("val", "test"):
            sel = frame["split"] == split
            mae = mean_absolute_error(age[sel], np.full(sel.sum(), age[train].mean()))
            print(f"predict the training mean ({age[train].mean():.2f}): {split} MAE {mae:.2f} years")
        cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
        bins = np.digitize(age, np.quantile(age, [0.25, 0.5, 0.75]))
        folds = list(cv.split(age, bins, groups))
        for name in ("tbv", "down8", "oracle"):
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
            pred = cross_val_predict(model, feats[name], age, cv=folds)
            print(
                f"ridge regression on {name:8s} cross-validated MAE "
                f"{mean_absolute_error(age, pred):.2f} years"
            )


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
        main(sys.argv[1], sys.argv[2])
