"""``mri-slice-transfer interpret``: where a trained model looks, for every scan of a list.

The work is :func:`mri_slice_transfer.interpret.run.interpret_scans`; see ``docs/interpret.md``.
"""

from __future__ import annotations

import argparse

from mri_slice_transfer.interpret.methods import DEFAULT_METHODS, METHODS
from mri_slice_transfer.vocabulary import Aggregation, Axis, Encoder, PositionEncoding, names

__all__ = ["HELP", "add_arguments", "run"]

HELP = "slice importance and saliency maps (Grad-CAM, occlusion) of a trained bundle on a list of scans"


def _methods(text: str) -> tuple[str, ...]:
    chosen = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"methods must be a comma-separated list of {', '.join(METHODS)}, not {text!r}"
        )
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer interpret``."""
    parser.add_argument("bundle", help="trained bundle folder (with models/model.pt and models/model.json)")
    parser.add_argument(
        "--input", required=True, help="scans: a folder, a glob pattern or a CSV with an 'image' column"
    )
    parser.add_argument(
        "--out", required=True, help="output folder (per-scan folders, group/, interpret.csv)"
    )
    parser.add_argument(
        "--methods",
        type=_methods,
        default=None,
        help=f"comma-separated, of {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)}, no gradcam "
        "for a model that has no default Grad-CAM layer; occlusion runs hundreds of forward passes per scan)",
    )
    parser.add_argument(
        "--dataset-dir",
        default=None,
        help="folder a CSV's relative image paths start from (default: its folder)",
    )
    parser.add_argument(
        "--occlusion-mask",
        type=int,
        default=8,
        help="occlusion patch size in voxels of the model's input grid (default: %(default)s)",
    )
    parser.add_argument(
        "--gradcam-layer",
        default=None,
        help="Grad-CAM's conv layer, a module name of the network, e.g. encoder.backbone.layer3 for finer "
        "ResNet maps (default: the encoder's last conv block)",
    )
    parser.add_argument(
        "--no-scan-plots", action="store_true", help="no PNGs per scan (NIfTI / CSV only; group PNGs still)"
    )
    arch = parser.add_argument_group(
        "architecture",
        "only for a model.json written before 0.6 (no architecture recorded); must be the training's",
    )
    arch.add_argument("--encoder", choices=names(Encoder), default=None)
    arch.add_argument("--axis", choices=names(Axis), default=None)
    arch.add_argument("--aggregation", choices=names(Aggregation), default=None)
    arch.add_argument(
        "--position-encoding", "--position_encoding", choices=names(PositionEncoding), default=None
    )
    arch.add_argument(
        "--input-scale", "--input_scale", type=float, default=None, help="e.g. 0.5 for the demo training"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``mri-slice-transfer interpret``; prints where the outputs are. Exit code 1 if no scan worked."""
    from mri_slice_transfer.engine.checkpoint import WeightFileError
    from mri_slice_transfer.engine.model_record import ModelRecordError
    from mri_slice_transfer.interpret.run import interpret_scans

    architecture = {
        "encoder": args.encoder,
        "axis": args.axis,
        "aggregation": args.aggregation,
        "position_encoding": args.position_encoding,
        "input_scale": args.input_scale,
    }
    try:
        result = interpret_scans(
            args.bundle,
            args.input,
            args.out,
            methods=args.methods,
            dataset_dir=args.dataset_dir,
            occlusion_mask=args.occlusion_mask,
            architecture=architecture,
            gradcam_layer=args.gradcam_layer,
            scan_plots=not args.no_scan_plots,
        )
    except (FileNotFoundError, ModelRecordError, WeightFileError, ValueError) as err:
        print(f"interpret: {err}")
        return 1
    n = len(result.rows)
    print(f"interpreted {n - result.n_errors} of {n} scans; summary: {result.summary_csv}")
    for method, path in result.group.items():
        print(f"group {method}: {path}")
    if result.n_errors:
        print(f"{result.n_errors} scan(s) failed: see the 'error' column of {result.summary_csv}")
    return 1 if result.n_errors == n else 0
