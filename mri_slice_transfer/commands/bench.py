"""``mri-slice-transfer bench``: training, inference, data-pipeline and preparation speed, side by side.

The options are a table (:data:`OPTIONS`); :func:`resolve_options` turns them into the settings of
:func:`mri_slice_transfer.bench.run.run_bench`. See :mod:`mri_slice_transfer.bench` and
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from typing import Any

from mri_slice_transfer.bench.process import ISOLATIONS, default_isolation
from mri_slice_transfer.bench.specs import BENCH_MODELS, DEFAULTS, QUICK_DEFAULTS

__all__ = ["HELP", "OPTIONS", "add_arguments", "resolve_options", "run"]

HELP = "measure training / inference / data-pipeline speed: reference-style baseline vs the fast path"


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        return [kind(x) for x in text.replace(" ", ",").split(",") if x]

    return parse


def _q(value: Any) -> str:
    """The ``--quick`` part of a help text."""
    return f" (--quick: {value})"


_SWITCH = {"action": "store_true"}
#: ``(flag, argparse keywords)`` of every option, in ``--help`` order. No default (``None``) means: from
#: :data:`~mri_slice_transfer.bench.specs.DEFAULTS` or ``QUICK_DEFAULTS`` (:func:`resolve_options`).
OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--quick", {**_SWITCH, "help": "CI-sized smoke run: tiny grid, 1 repeat, cnn5 only"}),
    ("--device", {"help": "cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)"}),
    (
        "--models",
        {
            "type": _csv(str),
            "help": f"comma-separated, from {', '.join(BENCH_MODELS)} "
            f"(default: {','.join(DEFAULTS['models'])}" + _q("cnn5") + ")",
        },
    ),
    ("--batch-size", {"type": int, "help": "scans per step (default: 8, the bundles'" + _q(2) + ")"}),
    (
        "--repeats",
        {
            "type": int,
            "help": "timed blocks per measurement; median and min/max are reported (default: 3" + _q(1) + ")",
        },
    ),
    ("--warmup", {"type": int, "help": "untimed steps first (default: 2" + _q(1) + ")"}),
    (
        "--min-time",
        {
            "type": float,
            "help": "minimum seconds per timed block, at least one step (default: 2" + _q(0.2) + ")",
        },
    ),
    (
        "--input-scale",
        {
            "type": float,
            "help": "input grid scale, as the bundles' input_scale (default: 1.0 = 91x109x91"
            + _q(0.25)
            + ")",
        },
    ),
    ("--axis", {"default": "axial", "choices": ("axial", "coronal", "sagittal"), "help": "slicing axis"}),
    ("--compile", {**_SWITCH, "help": "also measure fast+compile (torch.compile)"}),
    (
        "--fast-fp32",
        {
            **_SWITCH,
            "help": "also measure fast-fp32: the fast path without mixed precision (the bundles' default "
            "amp=false)",
        },
    ),
    (
        "--chunk",
        {
            "type": int,
            "help": "slice_chunk_size of the memory-option rows (default: 32" + _q(8) + "); 0 skips them",
        },
    ),
    ("--chunk-model", {"help": "model of the memory-option rows (default: resnet50" + _q("cnn5") + ")"}),
    (
        "--chunk-batch-size",
        {"type": int, "help": "batch of the memory-option rows (default: 8" + _q(2) + ")"},
    ),
    ("--skip-train", {**_SWITCH, "help": "no training / inference / memory measurements"}),
    ("--skip-pipeline", {**_SWITCH, "help": "no data-pipeline measurement"}),
    ("--skip-prepare", {**_SWITCH, "help": "no raw-scan preparation measurement"}),
    ("--pipeline-scans", {"type": int, "help": "scans in the data-pipeline test (default: 8" + _q(2) + ")"}),
    (
        "--pipeline-source",
        {
            "choices": ("synthetic", "phantom"),
            "help": "synthetic: demo-data generator (~0.7 s per scan to make); phantom: noisy ellipsoids "
            "(instant) (default: synthetic" + _q("phantom") + ")",
        },
    ),
    ("--data-dir", {"help": "time the data pipeline on the NIfTI files of this folder"}),
    (
        "--cache-workers",
        {"type": int, "default": 1, "help": "CacheDataset threads of the first pass (default: %(default)s)"},
    ),
    (
        "--data-path",
        {
            **_SWITCH,
            "help": "also measure the bundles' data paths (cache memory / disk / none): build time, "
            "scans/s and peak RSS at growing data-list sizes (entries repeat the scans of --data-dir "
            "or generated ones)",
        },
    ),
    (
        "--data-path-sizes",
        {"type": _csv(int), "help": "data-list entries, default: 200,2000,10000" + _q("4,8")},
    ),
    ("--data-path-files", {"type": int, "help": "distinct scans generated, default: 200" + _q(2)}),
    (
        "--data-path-memory-max",
        {
            "type": int,
            "help": "largest list cached in RAM (cache memory holds every entry), default: 2000" + _q(8),
        },
    ),
    ("--raw-scan", {"help": "time preparation of this raw scan (default: a generated one)"}),
    (
        "--scaling",
        {
            "metavar": "PNG",
            "help": "also plot resnet18 fast-path training scans/s against batch size and input scale "
            "to this PNG",
        },
    ),
    ("--scaling-model", {"default": "resnet18", "help": "model of --scaling (default: %(default)s)"}),
    ("--scaling-batch-sizes", {"type": _csv(int), "help": "default: 1,2,4,8" + _q("1,2")}),
    (
        "--scaling-scales",
        {"type": _csv(float), "help": "input scales, default: 0.5,0.75,1" + _q("0.15,0.25")},
    ),
    ("--json", {"metavar": "OUT", "help": "write every number to this JSON file"}),
    (
        "--isolation",
        {
            "choices": ISOLATIONS,
            "help": "fresh process per measurement: forkserver (default where available) or spawn; none runs "
            "in this process (peak memory then not per configuration)",
        },
    ),
    ("--timeout", {"type": float, "help": "seconds before a measurement is killed"}),
    ("--seed", {"type": int, "default": 0, "help": "seed of weights, inputs and generated scans"}),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer bench`` (:data:`OPTIONS`)."""
    for flag, spec in OPTIONS:
        parser.add_argument(flag, **spec)


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The effective settings: explicit options, else the ``--quick`` or full-run defaults.

    Args:
        args: the parsed options of :func:`add_arguments`.

    Returns:
        the settings :func:`mri_slice_transfer.bench.run.run_bench` takes.

    Raises:
        SystemExit: an unknown model, a count below 1 or an input scale <= 0 (the message says which).
    """
    base = QUICK_DEFAULTS if args.quick else DEFAULTS
    opts = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    models = [m.lower() for m in opts["models"]]
    bad = [m for m in models + [opts["chunk_model"].lower()] if m not in BENCH_MODELS]
    if bad:
        raise SystemExit(f"bench: unknown model(s) {', '.join(bad)}; choose from {', '.join(BENCH_MODELS)}")
    for key in ("batch_size", "repeats", "warmup", "pipeline_scans", "chunk_batch_size", "data_path_files"):
        if opts[key] < 1:
            raise SystemExit(f"bench: --{key.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in opts["data_path_sizes"]):
        raise SystemExit("bench: --data-path-sizes must be at least 1")
    if opts["input_scale"] <= 0 or any(s <= 0 for s in opts["scaling_scales"]):
        raise SystemExit("bench: input scales must be > 0")
    variants = (
        ["baseline", "fast"]
        + (["fast+compile"] if args.compile else [])
        + (["fast-fp32"] if args.fast_fp32 else [])
    )
    opts.update(
        models=models,
        chunk_model=opts["chunk_model"].lower(),
        variants=variants,
        device=args.device,
        axis=args.axis,
        isolation=args.isolation or default_isolation(),
        timeout=args.timeout,
        seed=args.seed,
        quick=bool(args.quick),
        skip_train=args.skip_train,
        skip_pipeline=args.skip_pipeline,
        skip_prepare=args.skip_prepare,
        data_path=args.data_path,
        data_dir=args.data_dir,
        cache_workers=max(1, args.cache_workers),
        raw_scan=args.raw_scan,
        scaling=args.scaling,
        scaling_model=args.scaling_model.lower(),
        json=args.json,
    )
    return opts


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mri-slice-transfer bench``; exit code 1 if any measurement failed."""
    from mri_slice_transfer.bench.report import format_report
    from mri_slice_transfer.bench.run import failed_measurements, run_bench
    from mri_slice_transfer.fileio import atomic_write_json

    opts = resolve_options(args)
    result = run_bench(opts)
    result["meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
        "host": platform.node(),
        "options": {k: v for k, v in opts.items() if k != "json"},
    }
    print(format_report(result))
    if opts["json"]:
        path = atomic_write_json(opts["json"], result, default=str)
        print(f"wrote {path}")
    failed = failed_measurements(result)
    if failed:
        print(f"{len(failed)} measurement(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
