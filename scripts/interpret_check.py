"""Do the saliency maps mean something? True-label vs shuffled-label models on the demo cohort.

The demo generator (``mri_slice_transfer.data.anatomy``) puts its AD effect in known places: the medial
temporal lobe contracts and the ventricles expand (and, weakly, the cortex thins). A model trained on
the true AD / CN labels should look there; a model trained on shuffled labels has nothing to find.

This script compares two models of the README main command's configuration (ResNet-18, axial, mean,
learned positional encoding, input scale 0.5, the demo's batch size 4 and cosine learning rate 3e-4 from
scratch): one trained on the true labels (``--true-bundle``: the README run's bundle folder; otherwise
trained here) and one trained on shuffled training / validation labels (same settings and seed). On the
same test scans (``--scans`` AD and as many CN scans of the test split) it runs ``interpret_scans``
(Grad-CAM on ``layer4``, the default, and on the finer ``layer3``) and reports which share of the
Grad-CAM mass inside the brain falls inside the effect region (MTL region > 0.5, or within 4 mm of the
ventricles), for the group map and per scan, against the region's share of the brain volume (what a
uniform map gives). Stages whose outputs exist are skipped, so a re-run only measures.

Usage::

    nice python scripts/interpret_check.py --work /tmp/interpret_check --epochs 2 --scans 5 \
        --true-bundle bundles/adni_ad
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
SCALE = 0.5
TRAIN = {"batch_size": 4, "lr": 0.0003, "lr_schedule": "cosine", "input_scale": SCALE, "progress_bar": False}
ARCH = {"encoder": "resnet18", "axis": "axial", "aggregation": "mean", "position_encoding": "learned"}
LAYERS = {"layer4": None, "layer3": "encoder.backbone.layer3"}


def effect_region() -> tuple[np.ndarray, np.ndarray]:
    """(effect region, brain mask) on the template grid, from the demo generator's own maps."""
    from mri_slice_transfer.data.anatomy import _world, mtl_region, ventricle_mask
    from mri_slice_transfer.template import load_template

    t = load_template()
    mtl = mtl_region(_world(t.shape, t.affine)) > 0.5
    vent = ndimage.binary_dilation(ventricle_mask(t), iterations=2)
    return (mtl | vent) & t.mask, t.mask


def write_lists(cohort: Path, out: Path, shuffle: bool, seed: int) -> Path:
    """The cohort's data lists, with the train and val ``dx`` permuted when ``shuffle``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        frame = pd.read_csv(cohort / f"{split}.csv", dtype=str, keep_default_na=False)
        if shuffle and split != "test":
            frame["dx"] = rng.permutation(frame["dx"].to_numpy())
        frame.to_csv(out / f"{split}.csv", index=False)
    return out


def trained_epochs(bundle: Path) -> int:
    """The last epoch the bundle's validation metrics record (0: none)."""
    path = bundle / "eval" / "val_metrics.json"
    return max((int(r["epoch"]) for r in json.loads(path.read_text())), default=0) if path.is_file() else 0


def start_training(
    bundle: Path, lists: Path, cohort: Path, epochs: int, seed: int
) -> subprocess.Popen | None:
    """Start training a copy of the adni_ad bundle in ``bundle`` (None: already trained)."""
    if trained_epochs(bundle) >= epochs:
        return None
    shutil.copytree(REPO / "bundles" / "adni_ad" / "configs", bundle / "configs", dirs_exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "train.json"),
    ]
    options = {**TRAIN, **ARCH, "datalist_dir": lists, "dataset_dir": cohort, "epochs": epochs, "seed": seed}
    options["overwrite"] = "true"
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    log = open(bundle.parent / "train.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def test_scans(cohort: Path, n: int, out: Path) -> Path:
    """The first ``n`` AD and ``n`` CN scans of the test split, as a CSV with absolute image paths."""
    frame = pd.read_csv(cohort / "test.csv", dtype=str, keep_default_na=False)
    frame = pd.concat([frame[frame["dx"] == dx].head(n) for dx in ("AD", "CN")])
    frame["image"] = [str(cohort / p) for p in frame["image"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return out


def measure(
    bundle: Path, scans: Path, out: Path, layer: str | None, region: np.ndarray, brain: np.ndarray
) -> dict:
    """Grad-CAM on ``scans``; the share of map mass (inside the brain) that is in ``region``."""
    import nibabel as nib

    from mri_slice_transfer.interpret.run import interpret_scans

    if not (out / "interpret.csv").is_file():
        interpret_scans(
            bundle,
            str(scans),
            out,
            methods=("gradcam",),
            architecture={**ARCH, "input_scale": SCALE},
            gradcam_layer=layer,
            scan_plots=False,
        )
    rows = pd.read_csv(out / "interpret.csv")
    ok = rows[rows["status"] == "ok"]

    def share(path: str | Path) -> float:
        m = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        return float(m[region].sum() / max(m[brain].sum(), 1e-12))

    per_scan = np.array([share(p) for p in ok["gradcam_nii"]])
    return {
        "group_share": share(out / "group" / "gradcam.nii.gz"),
        "scan_share_mean": float(per_scan.mean()),
        "scan_share_min": float(per_scan.min()),
        "scan_share_max": float(per_scan.max()),
        "n_scans": int(len(per_scan)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="working folder (bundles, lists, maps)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the trainings done here")
    parser.add_argument("--scans", type=int, default=5, help="AD scans (and as many CN) of the test split")
    parser.add_argument("--true-bundle", default=None, help="an already trained true-label bundle folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from mri_slice_transfer.engine.datasets import resolve_data

    work = Path(args.work)
    cohort = Path(resolve_data("adni_ad", None, None, 200, 0).datalist_dir)
    region, brain = effect_region()
    bundles = {"true": Path(args.true_bundle) if args.true_bundle else work / "true" / "adni_ad"}
    bundles["shuffled"] = work / "shuffled" / "adni_ad"
    jobs = {}
    for name, bundle in bundles.items():
        if name == "true" and args.true_bundle:
            continue
        lists = write_lists(cohort, work / f"{name}_lists", name == "shuffled", args.seed)
        jobs[name] = start_training(bundle, lists, cohort, args.epochs, args.seed)
    for name, job in jobs.items():
        if job is not None and job.wait() != 0:
            raise SystemExit(f"training {name} failed: see {work / name / 'train.log'}")
    scans = test_scans(cohort, args.scans, work / "scans.csv")
    results: dict = {"region_share_of_brain": float(region.sum() / brain.sum()), "layers": {}}
    for layer, module in LAYERS.items():
        found = {}
        for name, bundle in bundles.items():
            found[name] = measure(bundle, scans, work / f"{name}_{layer}", module, region, brain)
            found[name]["val_balanced_accuracy"] = json.loads((bundle / "models" / "model.json").read_text())[
                "metrics"
            ]["val_balanced_accuracy"]
        found["group_ratio"] = found["true"]["group_share"] / found["shuffled"]["group_share"]
        results["layers"][layer] = found
    print(json.dumps(results, indent=2))
    (work / "interpret_check.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
