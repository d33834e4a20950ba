"""Run the benchmark: one job per measurement, each in a fresh process, with progress lines.

:func:`run_bench` takes the settings of :func:`mri_slice_transfer.commands.bench.resolve_options`,
runs every selected section (training and inference of each model x variant, the memory option, the
data pipeline, raw-scan preparation, scaling) through :func:`.process.run_isolated`, and returns one
result dict; :func:`failed_measurements` names the measurements that failed. The measurements
themselves live in :mod:`.measure` and :mod:`.pipeline`; the printed report in :mod:`.report`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

from mri_slice_transfer.bench.process import WorkerError, run_isolated
from mri_slice_transfer.bench.report import check_targets, summarize
from mri_slice_transfer.bench.scaling import plot_scaling
from mri_slice_transfer.bench.specs import VARIANTS, model_label

__all__ = ["run_bench", "failed_measurements"]


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
            "mixed",
            "precision_dtype",
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
    """Run every section selected in ``opts`` and return the result dict.

    Args:
        opts: the effective settings (:func:`mri_slice_transfer.commands.bench.resolve_options`).

    Returns:
        ``environment``, ``settings``, ``train``, ``infer``, ``chunk``, ``pipeline``, ``prepare``,
        ``scaling``, ``targets`` and ``wall_time_s`` (the sections that ran).
    """
    wall = time.perf_counter()
    chunk_on = not opts["skip_train"] and opts["chunk"] > 0
    n_jobs = 1 + (0 if opts["skip_train"] else 1 + len(opts["models"]) * len(opts["variants"]))
    n_jobs += 2 * chunk_on + (not opts["skip_pipeline"]) + (not opts["skip_prepare"])
    n_jobs += (not opts["data_dir"]) + 3 * len(opts["data_path_sizes"]) if opts["data_path"] else 0
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
    if not opts["skip_train"]:
        result["ceilings"] = _ceilings(opts, runner)
    cache = {} if opts["skip_train"] else _train_rows(opts, runner, result)
    if chunk_on:
        result["chunk"] = _chunk_rows(opts, runner, cache)
    if not opts["skip_pipeline"]:
        result["pipeline"] = _pipeline(opts, runner, result)
    if opts["data_path"]:
        result["data_path"] = _data_path(opts, runner, result)
    if not opts["skip_prepare"]:
        result["prepare"] = _prepare(opts, runner)
    else:
        result["prepare"] = {"skipped": True}
    if opts["scaling"]:
        result["scaling"] = _scaling(opts, runner)
    result["targets"] = check_targets(result)
    result["wall_time_s"] = time.perf_counter() - wall
    return result


def _ceilings(opts: dict[str, Any], runner: _Runner) -> dict[str, Any]:
    """The machine's GEMM and convolution TFLOP/s in fp32 and the mixed dtype (:mod:`.ceiling`)."""
    kwargs = {"device": opts["device"], "min_time": opts["min_time"]}
    if opts["quick"]:
        kwargs["gemm_n"] = 1024
        kwargs["conv_shape"] = (64, 64, 23, 28, 64, 3)
    res, err = runner(
        "ceilings: GEMM and conv TFLOP/s", "mri_slice_transfer.bench.ceiling:measure_ceilings", kwargs
    )
    return {"error": err} if err else res


def _train_rows(opts: dict[str, Any], runner: _Runner, result: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Training + inference of every model x variant into ``result``; returns the measurements by config."""
    cache: dict[tuple, dict[str, Any]] = {}  # identical training configurations are measured once
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
    return cache


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


#: The data paths of the ``--data-path`` section, in table order.
DATA_PATHS: tuple[str, ...] = ("memory", "disk", "none")


def _data_path_row(opts: dict[str, Any], runner: _Runner, cache: str, n: int, job: dict[str, Any]) -> dict:
    """One (data path, list size) measurement, or why it was not run."""
    if cache == "memory" and n > opts["data_path_memory_max"]:
        return {
            "cache": cache,
            "n_entries": n,
            "skipped": f"over --data-path-memory-max {opts['data_path_memory_max']}",
        }
    res, err = runner(
        f"data path: {cache}, {n} list entries",
        "mri_slice_transfer.bench.pipeline:measure_data_path",
        {**job, "cache": cache, "n_entries": n},
    )
    if err:
        return {"cache": cache, "n_entries": n, "error": err}
    _log(
        f"    build {res['build_s']:.1f} s, {res['scans_per_s']:.3g} scans/s, "
        f"peak RSS {res['peak_rss_mb']:.0f} MB [{runner.last_seconds:.1f} s]"
    )
    return res


def _data_path(opts: dict[str, Any], runner: _Runner, result: dict[str, Any]) -> dict[str, Any]:
    """In-RAM vs on-disk cache vs decode-every-epoch at growing list sizes (issue 14)."""
    with tempfile.TemporaryDirectory(prefix="mst_bench_data_path_") as tmp:
        if opts["data_dir"]:
            files = {"folder": opts["data_dir"], "n_files": None, "file_mb_mean": None}
        else:
            job = {
                "out": tmp,
                "n": opts["data_path_files"],
                "source": opts["pipeline_source"],
                "seed": opts["seed"],
            }
            files, err = runner(
                f"data path: writing {opts['data_path_files']} scans",
                "mri_slice_transfer.bench.pipeline:write_scan_folder",
                job,
            )
            if err:
                return {"error": err}
        job = {
            "data_dir": files["folder"],
            "cache_dir": f"{tmp}/store",  # one store for every size: the entries repeat the same files
            "input_scale": opts["input_scale"],
            "batch_size": opts["batch_size"],
            "min_time": opts["min_time"],
            "cache_workers": opts["cache_workers"],
            "seed": opts["seed"],
        }
        rows = [_data_path_row(opts, runner, c, n, job) for c in DATA_PATHS for n in opts["data_path_sizes"]]
    out: dict[str, Any] = {
        "files": files,
        "source": opts["data_dir"] or opts["pipeline_source"],
        "rows": rows,
    }
    out["input_scale"], out["batch_size"] = opts["input_scale"], opts["batch_size"]
    disk = [r for r in rows if r["cache"] == "disk" and r.get("data_mb") is not None]
    if len(disk) >= 2:
        out["disk_memory_growth_mb"] = disk[-1]["data_mb"] - disk[0]["data_mb"]
    fast = [r for r in result.get("train", []) if r.get("variant") == "fast" and not r.get("error")]
    if disk and fast:
        best = max(fast, key=lambda r: r["scans_per_s"]["median"])
        out["fastest_fast_training_model"] = model_label(best["model"])
        out["disk_vs_fast_training"] = min(r["scans_per_s"] for r in disk) / best["scans_per_s"]["median"]
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


def failed_measurements(result: dict[str, Any]) -> list[str]:
    """Names of the measurements that failed (rows with an ``error``).

    Args:
        result: the dict of :func:`run_bench`.

    Returns:
        e.g. ``["cnn5 fast train", "pipeline"]``; empty when every measurement succeeded.
    """
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
    out += [name for name in ("pipeline", "prepare", "data_path") if (result.get(name) or {}).get("error")]
    out += [
        f"data path {r['cache']} {r['n_entries']}"
        for r in (result.get("data_path") or {}).get("rows", [])
        if r.get("error")
    ]
    out += [
        f"scaling batch {p['batch_size']} scale {p['input_scale']:g}"
        for p in (result.get("scaling") or {}).get("points", [])
        if p.get("error")
    ]
    return out
