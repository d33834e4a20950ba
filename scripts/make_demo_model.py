"""Make the shipped demo model: the README main command's run, packed as ``model.pt`` + ``model.json``.

Usage (from the repository root)::

    python scripts/make_demo_model.py                        # AD bundle: train (6-7 min on 2 cores), pack
    python scripts/make_demo_model.py --from bundles/adni_ad # pack the run the README main command left there
    python scripts/make_demo_model.py --half                 # float16 weights: half the size, see below
    python scripts/make_demo_model.py --bundle ukbb_brain_age
    python scripts/make_demo_model.py -- --epochs 1 ...      # extra overrides for the training run

Steps:

1. Train: ``python -m monai.bundle run --config_file bundles/<bundle>/configs/train.json`` (the README
   main command) with ``--bundle_root runs/demo_model/<bundle>``, so the checkout's own ``models/`` stays
   free for the user's first run. ``--from DIR`` skips this and packs the run in ``DIR`` instead.
2. Pack: ``models/model.pt`` (checked against the ``sha256`` of its record) and ``models/model.json``
   are written atomically to ``--out`` (default ``bundles/<bundle>/models/demo/``), weights first. With
   ``--half`` floating-point tensors are stored as float16 (they load into the float32 network; the
   predictions then differ by float16 rounding, printed in step 3) and the record's ``sha256`` is
   updated.
3. Check: the packed model loads with :func:`mri_slice_transfer.load_model` (no options) and predicts
   the run's test list (``test.csv`` of the record's ``training_data.datalist_dir``) like the trained
   one; the largest absolute difference, the file sizes and the ``sha256`` (for ``large_files.yml``)
   are printed.

Use it with ``inference.json --ckpt_path bundles/adni_ad/models/demo/model.pt --input DIR`` or
``mri_slice_transfer.load_model("bundles/adni_ad/models/demo")``. ``bundles/*/models/`` is not tracked
by git; committing a model is a separate, deliberate step (``git add -f``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(bundle: str, work: Path, extra: list[str]) -> None:
    """Run the README main command for ``bundle`` into ``work`` (a fresh run: ``--overwrite true``)."""
    config = REPO / "bundles" / bundle / "configs" / "train.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)]
    cmd += ["--bundle_root", str(work), "--overwrite", "true", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def pack(run: Path, out: Path, half: bool) -> Path:
    """Copy the run's checked ``model.pt`` (float16 with ``half``) and its record to ``out``.

    Returns:
        the packed ``model.pt``.
    """
    from mri_slice_transfer.api import weights_path
    from mri_slice_transfer.engine.checkpoint import load_model_weights
    from mri_slice_transfer.engine.io import atomic_torch_save
    from mri_slice_transfer.engine.model_record import record_path
    from mri_slice_transfer.fileio import atomic_write_bytes, atomic_write_json, file_sha256

    weights = weights_path(run)
    state = load_model_weights(weights)  # the sha256 in the record is checked here
    record = json.loads(record_path(weights).read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    packed = out / "model.pt"
    if half:
        atomic_torch_save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, packed)
    else:
        atomic_write_bytes(packed, weights.read_bytes())
        if file_sha256(packed) != record["sha256"]:
            raise RuntimeError(f"{weights} changed while it was copied to {packed}; run the script again")
    record["sha256"] = file_sha256(packed)
    atomic_write_json(record_path(packed), record)
    return packed


def check(run: Path, packed: Path) -> None:
    """Load the packed model without options and compare its predictions with the trained one's."""
    import mri_slice_transfer as mst

    trained, shipped = mst.load_model(run), mst.load_model(packed)
    test_csv = Path(str(trained.record.training_data.get("datalist_dir", ""))) / "test.csv"
    if not test_csv.is_file():
        print(f"no test list at {test_csv}: predictions not compared")
    else:
        a, b = trained.predict(str(test_csv)), shipped.predict(str(test_csv))
        column = "logit" if "logit" in a.columns else "predicted_age"
        diff = (a[column] - b[column]).abs().max()
        print(
            f"{len(b)} test scans of {test_csv}: largest |{column} difference| packed vs trained = {diff:.3g}"
        )
    size = packed.stat().st_size
    print(f"packed model: {packed} ({size / 1e6:.1f} MB), record {packed.with_suffix('.json')}")
    print(f"sha256 (large_files.yml hash_val): {shipped.record.sha256}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="adni_ad", choices=["adni_ad", "ukbb_brain_age"])
    parser.add_argument("--from", dest="run", type=Path, help="pack this trained bundle root, no training")
    parser.add_argument("--work", type=Path, help="training bundle_root (default runs/demo_model/<bundle>)")
    parser.add_argument("--out", type=Path, help="where to pack (default bundles/<bundle>/models/demo)")
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    parser.add_argument("extra", nargs="*", help="overrides for the training run, after --")
    args = parser.parse_args(argv)
    run = args.run
    if run is None:
        run = args.work or REPO / "runs" / "demo_model" / args.bundle
        train(args.bundle, run, args.extra)
    packed = pack(run, args.out or REPO / "bundles" / args.bundle / "models" / "demo", args.half)
    check(run, packed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
