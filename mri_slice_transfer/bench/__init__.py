"""``mri-slice-transfer bench``: training, inference, data-pipeline and preparation speed, side by side.

One command measures, in one run, for every model (cnn5, ResNet-18, ResNet-50 slice models and the
3D-CNN by default) the reference-style ``baseline`` and the project's ``fast`` path (see
:mod:`.specs`): training and inference scans/s, their ratio, achieved TFLOP/s (from a
``FlopCounterMode`` count) and the training peak memory; the ResNet-50 memory option (plain vs
``slice_chunk_size``); the data pipeline (nibabel decode floor, first pass, cached pass); and the
preparation of one raw scan. Every configuration runs in a fresh child process (:mod:`.process`).
It prints a progress line per measurement, a table at the end, and optionally writes JSON and a
scaling plot. See ``docs/benchmarks.md``.

This module only imports the standard library at the top: it is imported when the command line is
built. The measurements live in :mod:`.measure` and :mod:`.pipeline`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mri_slice_transfer.bench.process import ISOLATIONS, WorkerError, default_isolation, run_isolated
from mri_slice_transfer.bench.report import check_targets, format_report, summarize
from mri_slice_transfer.bench.specs import BENCH_MODELS, DEFAULT_MODELS, VARIANTS, model_label

__all__ = ["HELP", "DEFAULTS", "QUICK_DEFAULTS", "add_arguments", "resolve_options", "run_bench", "run"]

HELP = "measure training / inference / data-pipeline speed: reference-style baseline vs the fast path"

#: Defaults of the full run (``None`` in argparse means: take it from here or from QUICK_DEFAULTS).
DEFAULTS: dict[str, Any] = {
    "models": list(DEFAULT_MODELS),
    "batch_size": 8,
    "repeats": 3,
    "warmup": 2,
    "min_time": 2.0,
    "input_scale": 1.0,
    "chunk": 32,
    "chunk_model": "resnet50",
    "chunk_batch_size": 8,
    "pipeline_scans": 8,
    "pipeline_source": "synthetic",
    "scaling_batch_sizes": [1, 2, 4, 8],
    "scaling_scales": [0.5, 0.75, 1.0],
}
#: What ``--quick`` changes (a CI-sized smoke run: tiny grid, one repeat, cnn5 only).
QUICK_DEFAULTS: dict[str, Any] = {
    "models": ["cnn5"],
    "batch_size": 2,
    "repeats": 1,
    "warmup": 1,
    "min_time": 0.2,
    "input_scale": 0.25,
    "chunk": 8,
    "chunk_model": "cnn5",
    "chunk_batch_size": 2,
    "pipeline_scans": 2,
    "pipeline_source": "phantom",
    "scaling_batch_sizes": [1, 2],
    "scaling_scales": [0.15, 0.25],
}


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        return [kind(x) for x in text.replace(" ", ",").split(",") if x]

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer bench``."""
    q = " (--quick: {})"
    parser.add_argument(
        "--quick", action="store_true", help="CI-sized smoke run: tiny grid, 1 repeat, cnn5 only"
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--models",
        type=_csv(str),
        default=None,
        help=f"comma-separated, from {', '.join(BENCH_MODELS)} (default: {','.join(DEFAULTS['models'])}"
        + q.format("cnn5")
        + ")",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="scans per step (default: 8, the bundles'" + q.format(2) + ")",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed blocks per measurement; median and min/max are reported (default: 3" + q.format(1) + ")",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 2" + q.format(1) + ")"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="minimum seconds per timed block, at least one step (default: 2" + q.format(0.2) + ")",
    )
    parser.add_argument(
        "--input-scale",
        type=float,
        default=None,
        help="input grid scale, as the bundles' input_scale (default: 1.0 = 91x109x91" + q.format(0.25) + ")",
    )
    parser.add_argument(
        "--axis", default="axial", choices=("axial", "coronal", "sagittal"), help="slicing axis"
    )
    parser.add_argument("--compile", action="store_true", help="also measure fast+compile (torch.compile)")
    parser.add_argument(
        "--fast-fp32",
        action="store_true",
        help="also measure fast-fp32: the fast path without mixed precision (the bundles' default amp=false)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="slice_chunk_size of the memory-option rows (default: 32" + q.format(8) + "); 0 skips them",
    )
    parser.add_argument(
        "--chunk-model",
        default=None,
        help="model of the memory-option rows (default: resnet50" + q.format("cnn5") + ")",
    )
    parser.add_argument(
        "--chunk-batch-size",
        type=int,
        default=None,
        help="batch of the memory-option rows (default: 8" + q.format(2) + ")",
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="no training / inference / memory measurements"
    )
    parser.add_argument("--skip-pipeline", action="store_true", help="no data-pipeline measurement")
    parser.add_argument("--skip-prepare", action="store_true", help="no raw-scan preparation measurement")
    parser.add_argument(
        "--pipeline-scans",
        type=int,
        default=None,
        help="scans in the data-pipeline test (default: 8" + q.format(2) + ")",
    )
    parser.add_argument(
        "--pipeline-source",
        choices=("synthetic", "phantom"),
        default=None,
        help="synthetic: demo-data generator (~0.7 s per scan to make); phantom: noisy ellipsoids (instant)"
        " (default: synthetic" + q.format("phantom") + ")",
    )
    parser.add_argument(
        "--data-dir", default=None, help="time the data pipeline on the NIfTI files of this folder"
    )
    parser.add_argument(
        "--cache-workers",
        type=int,
        default=1,
        help="CacheDataset threads of the first pass (default: %(default)s)",
    )
    parser.add_argument(
        "--raw-scan", default=None, help="time preparation of this raw scan (default: a generated one)"
    )
    parser.add_argument(
        "--scaling",
        metavar="PNG",
        default=None,
        help="also plot resnet18 fast-path training scans/s against batch size and input scale to this PNG",
    )
    parser.add_argument(
        "--scaling-model", default="resnet18", help="model of --scaling (default: %(default)s)"
    )
    parser.add_argument(
        "--scaling-batch-sizes", type=_csv(int), default=None, help="default: 1,2,4,8" + q.format("1,2")
    )
    parser.add_argument(
        "--scaling-scales",
        type=_csv(float),
        default=None,
        help="input scales, default: 0.5,0.75,1" + q.format("0.15,0.25"),
    )
    parser.add_argument("--json", metavar="OUT", default=None, help="write every number to this JSON file")
    parser.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default=None,
        help="fresh process per measurement: forkserver (default where available) or spawn; none runs in "
        "this process (peak memory then not per configuration)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a measurement is killed")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and generated scans")


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The effective settings: explicit options, else the ``--quick`` or full-run defaults."""
    base = QUICK_DEFAULTS if args.quick else DEFAULTS
    opts = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    models = [m.lower() for m in opts["models"]]
    bad = [m for m in models + [opts["chunk_model"].lower()] if m not in BENCH_MODELS]
    if bad:
        raise SystemExit(f"bench: unknown model(s) {', '.join(bad)}; choose from {', '.join(BENCH_MODELS)}")
    for key in ("batch_size", "repeats", "warmup", "pipeline_scans", "chunk_batch_size"):
        if opts[key] < 1:
            raise SystemExit(f"bench: --{key.replace('_', '-')} must be at least 1")
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
        data_dir=args.data_dir,
        cache_workers=max(1, args.cache_workers),
        raw_scan=args.raw_scan,
        scaling=args.scaling,
        scaling_model=args.scaling_model.lower(),
        json=args.json,
    )
    return opts


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _speed_row(res: dict[str, Any], phase: str) -> dict[str, Any]:
    p = res[phase]
    row = {
        k: res[k]
        for k in (
            "model",
            "variant",
            "batch_size",
            "input_scale",
            "spatial_size",
            "slices",
            "axis",
            "slice_chunk_size",
            "params",
            "precision",
            "channels_last_applied",
        )
    }
    row.update(
        scans_per_s=summarize(p["scans_per_s"]),
        tflops=summarize(p["tflops"]),
        gflop_per_scan=p["flops_per_scan"] / 1e9,
        first_step_s=p["first_step_s"],
        steps=p["steps"],
        seconds=p["seconds"],
    )
    if phase == "train":
        mem = res["memory"]
        row.update(
            peak_rss_mb=mem["peak_rss_mb"],
            train_mem_mb=mem["train_mb"],
            rss_start_mb=mem["rss_start_mb"],
            cuda_peak_mb=mem["cuda_peak_mb"],
        )
    return row


class _Runner:
    """Runs the jobs one after another with progress lines; counts them for ``[i/N]``."""

    def __init__(self, opts: dict[str, Any], total: int) -> None:
        self.opts = opts
        self.total = total
        self.done = 0
        self.last_seconds = 0.0
        self.started = time.perf_counter()

    def __call__(self, label: str, target: str, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
        self.done += 1
        _log(f"[{self.done}/{self.total}, {time.perf_counter() - self.started:.0f} s] {label} ...")
        start = time.perf_counter()
        try:
            out = run_isolated(target, kwargs, self.opts["isolation"], self.opts["timeout"])
            err = None
        except WorkerError as exc:
            out, err = None, str(exc)
            _log(f"    FAILED after {time.perf_counter() - start:.1f} s: {err.splitlines()[0]}")
        self.last_seconds = time.perf_counter() - start
        return out, err


def _model_job(opts: dict[str, Any], model: str, variant: str, **over: Any) -> dict[str, Any]:
    job = {
        "model": model,
        "variant": variant,
        "batch_size": opts["batch_size"],
        "input_scale": opts["input_scale"],
        "axis": opts["axis"],
        "slice_chunk_size": None,
        "device": opts["device"],
        "warmup": opts["warmup"],
        "repeats": opts["repeats"],
        "min_time": opts["min_time"],
        "seed": opts["seed"],
        "train": True,
        "infer": True,
    }
    job.update(over)
    return job


def run_bench(opts: dict[str, Any]) -> dict[str, Any]:
    """Run every section selected in ``opts`` (from :func:`resolve_options`) and return the result dict."""
    wall = time.perf_counter()
    chunk_on = not opts["skip_train"] and opts["chunk"] > 0
    n_jobs = 1 + (0 if opts["skip_train"] else len(opts["models"]) * len(opts["variants"]))
    n_jobs += 2 * chunk_on + (not opts["skip_pipeline"]) + (not opts["skip_prepare"])
    n_jobs += len(opts["scaling_batch_sizes"]) * len(opts["scaling_scales"]) if opts["scaling"] else 0
    runner = _Runner(opts, n_jobs)
    if opts["isolation"] == "forkserver":
        _log("starting the measurement process server (imports torch and MONAI once) ...")
    env, err = runner(
        "environment", "mri_slice_transfer.bench.measure:environment", {"device": opts["device"]}
    )
    if err:
        raise SystemExit(f"bench: could not start a measurement process: {err}")
    opts["device"] = env["bench_device"]
    _log(
        f"    device {opts['device']}, {env['device']['torch_threads']} threads, "
        f"torch {env['packages']['torch']}"
    )

    result: dict[str, Any] = {
        "environment": env,
        "settings": {
            k: opts[k]
            for k in (
                "device",
                "models",
                "variants",
                "batch_size",
                "repeats",
                "warmup",
                "min_time",
                "input_scale",
                "axis",
                "isolation",
                "quick",
                "seed",
            )
        },
        "train": [],
        "infer": [],
    }
    result["settings"]["variant_descriptions"] = {v: VARIANTS[v].describe() for v in opts["variants"]}
    result["settings"]["variant_settings"] = {v: VARIANTS[v].as_dict() for v in opts["variants"]}
    cache: dict[tuple, dict[str, Any]] = {}  # identical training configurations are measured once

    if not opts["skip_train"]:
        for model in opts["models"]:
            for variant in opts["variants"]:
                job = _model_job(opts, model, variant)
                res, err = runner(
                    f"{model_label(model)} {variant}: training + inference, batch {opts['batch_size']}",
                    "mri_slice_transfer.bench.measure:measure_model",
                    job,
                )
                if err:
                    for phase in ("train", "infer"):
                        result[phase].append({"model": model, "variant": variant, "error": err})
                    continue
                cache[(model, variant, opts["batch_size"], None)] = res
                tr, inf = _speed_row(res, "train"), _speed_row(res, "infer")
                result["train"].append(tr)
                result["infer"].append(inf)
                _log(
                    f"    train {tr['scans_per_s']['median']:.3g} scans/s "
                    f"({tr['tflops']['median']:.3g} TFLOP/s, peak RSS {tr['peak_rss_mb']:.0f} MB), "
                    f"inference {inf['scans_per_s']['median']:.3g} scans/s "
                    f"[{runner.last_seconds:.1f} s]"
                )
    if chunk_on:
        result["chunk"] = _chunk_rows(opts, runner, cache)
    if not opts["skip_pipeline"]:
        result["pipeline"] = _pipeline(opts, runner, result)
    if not opts["skip_prepare"]:
        result["prepare"] = _prepare(opts, runner)
    else:
        result["prepare"] = {"skipped": True}
    if opts["scaling"]:
        result["scaling"] = _scaling(opts, runner)
    result["targets"] = check_targets(result)
    result["wall_time_s"] = time.perf_counter() - wall
    return result


def _chunk_rows(opts: dict[str, Any], runner: _Runner, cache: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    model, batch, chunk = opts["chunk_model"], opts["chunk_batch_size"], opts["chunk"]
    out: dict[str, Any] = {"model": model, "batch_size": batch, "variant": "fast", "chunk": chunk, "rows": []}
    for size in (None, chunk):
        key = (model, "fast", batch, size)
        res = cache.get(key)
        if res is not None:
            runner.done += 1
            _log(
                f"[{runner.done}/{runner.total}] {model_label(model)} fast plain, batch {batch}: "
                "measured above"
            )
        else:
            job = _model_job(opts, model, "fast", batch_size=batch, slice_chunk_size=size, infer=False)
            what = "plain" if size is None else f"slice_chunk_size={size}"
            res, err = runner(
                f"{model_label(model)} fast training, batch {batch}, {what}",
                "mri_slice_transfer.bench.measure:measure_model",
                job,
            )
            if err:
                out["rows"].append({"slice_chunk_size": size, "error": err})
                continue
            row = _speed_row(res, "train")
            _log(
                f"    {row['scans_per_s']['median']:.3g} scans/s, peak RSS {row['peak_rss_mb']:.0f} MB, "
                f"+{row['train_mem_mb']:.0f} MB for training [{runner.last_seconds:.1f} s]"
            )
        out["rows"].append(_speed_row(res, "train"))
    good = {r["slice_chunk_size"]: r for r in out["rows"] if not r.get("error")}
    if None in good and chunk in good:
        plain, chunked = good[None], good[chunk]
        out["peak_rss_ratio"] = chunked["peak_rss_mb"] / plain["peak_rss_mb"]
        if plain.get("train_mem_mb") and chunked.get("train_mem_mb") is not None:
            out["train_mem_ratio"] = chunked["train_mem_mb"] / plain["train_mem_mb"]
        if plain.get("cuda_peak_mb"):
            out["cuda_peak_ratio"] = chunked["cuda_peak_mb"] / plain["cuda_peak_mb"]
        out["speed_ratio"] = chunked["scans_per_s"]["median"] / plain["scans_per_s"]["median"]
    return out


def _pipeline(opts: dict[str, Any], runner: _Runner, result: dict[str, Any]) -> dict[str, Any]:
    job = {
        "n_scans": opts["pipeline_scans"],
        "source": opts["pipeline_source"],
        "data_dir": opts["data_dir"],
        "input_scale": opts["input_scale"],
        "batch_size": opts["batch_size"],
        "repeats": opts["repeats"],
        "min_time": opts["min_time"],
        "cache_workers": opts["cache_workers"],
        "seed": opts["seed"],
    }
    src = opts["data_dir"] or opts["pipeline_source"]
    res, err = runner(
        f"data pipeline: {opts['pipeline_scans']} scans ({src})",
        "mri_slice_transfer.bench.pipeline:measure_pipeline",
        job,
    )
    if err:
        return {"error": err}
    out = dict(res)
    out["decode"] = summarize(res["decode_scans_per_s"])
    out["first_pass"] = summarize(res["first_pass_scans_per_s"])
    out["cached"] = summarize(res["cached_scans_per_s"])
    out["cached_vs_first_pass"] = out["cached"]["median"] / out["first_pass"]["median"]
    out["decode_vs_first_pass"] = out["decode"]["median"] / out["first_pass"]["median"]
    fast = [r for r in result["train"] if r.get("variant") == "fast" and not r.get("error")]
    if fast:
        best = max(fast, key=lambda r: r["scans_per_s"]["median"])
        out["fastest_fast_training_model"] = model_label(best["model"])
        out["fastest_fast_training_scans_per_s"] = best["scans_per_s"]["median"]
        out["cached_vs_fast_training"] = out["cached"]["median"] / best["scans_per_s"]["median"]
    _log(
        f"    decode {out['decode']['median']:.3g}, first pass {out['first_pass']['median']:.3g}, "
        f"cached {out['cached']['median']:.3g} scans/s [{runner.last_seconds:.1f} s]"
    )
    return out


def _prepare(opts: dict[str, Any], runner: _Runner) -> dict[str, Any]:
    job = {"raw_scan": opts["raw_scan"], "repeats": opts["repeats"], "seed": opts["seed"]}
    res, err = runner(
        "raw-scan preparation (prepare_scan)", "mri_slice_transfer.bench.pipeline:measure_prepare", job
    )
    if err:
        return {"error": err}
    out = dict(res)
    out["seconds_per_scan"] = summarize(res["seconds"])
    _log(f"    {out['seconds_per_scan']['median']:.3g} s per scan [{runner.last_seconds:.1f} s]")
    return out


def _scaling(opts: dict[str, Any], runner: _Runner) -> dict[str, Any]:
    from mri_slice_transfer.bench.scaling import plot_scaling

    model = opts["scaling_model"]
    points = []
    for scale in opts["scaling_scales"]:
        for batch in opts["scaling_batch_sizes"]:
            job = _model_job(opts, model, "fast", batch_size=batch, input_scale=scale, infer=False)
            res, err = runner(
                f"scaling: {model_label(model)} fast training, batch {batch}, input scale {scale:g}",
                "mri_slice_transfer.bench.measure:measure_model",
                job,
            )
            if err:
                points.append({"batch_size": batch, "input_scale": scale, "error": err})
                continue
            row = _speed_row(res, "train")
            points.append(
                {
                    "batch_size": batch,
                    "input_scale": scale,
                    "spatial_size": row["spatial_size"],
                    "slices": row["slices"],
                    "scans_per_s": row["scans_per_s"]["median"],
                    "scans_per_s_summary": row["scans_per_s"],
                    "tflops": row["tflops"]["median"],
                }
            )
            _log(f"    {row['scans_per_s']['median']:.3g} scans/s [{runner.last_seconds:.1f} s]")
    png = plot_scaling(
        points, opts["scaling"], title=f"{model_label(model)} fast-path training on {opts['device']}"
    )
    return {"model": model, "variant": "fast", "png": str(png), "points": points}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mri-slice-transfer bench``."""
    opts = resolve_options(args)
    result = run_bench(opts)
    result["meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (py3.10)
        "host": platform.node(),
        "options": {k: v for k, v in opts.items() if k != "json"},
    }
    print(format_report(result))
    if opts["json"]:
        path = Path(opts["json"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    failed = _failures(result)
    if failed:
        print(f"{len(failed)} measurement(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _failures(result: dict[str, Any]) -> list[str]:
    """Names of the measurements that failed (rows with an ``error``)."""
    out = [
        f"{r['model']} {r['variant']} {phase}"
        for phase in ("train", "infer")
        for r in result[phase]
        if r.get("error")
    ]
    out += [
        f"chunk {r['slice_chunk_size']}"
        for r in (result.get("chunk") or {}).get("rows", [])
        if r.get("error")
    ]
    out += [name for name in ("pipeline", "prepare") if (result.get(name) or {}).get("error")]
    out += [
        f"scaling batch {p['batch_size']} scale {p['input_scale']:g}"
        for p in (result.get("scaling") or {}).get("points", [])
        if p.get("error")
    ]
    return out
