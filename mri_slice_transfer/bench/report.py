"""Summaries, printed tables and target checks of ``mri-slice-transfer bench`` (standard library only)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from mri_slice_transfer.bench.specs import model_label

__all__ = ["summarize", "fmt_num", "fmt_summary", "format_table", "format_report", "check_targets", "TARGETS"]

#: The speed targets: (issues, what, model or section, minimum ratio) — checked by :func:`check_targets`.
#: ``fast`` is the bundles' default path (``amp: auto``), so issue 17's targets are checked on it too.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("6", "train", "resnet18", 3.0),
    ("17", "train", "resnet18", 2.5),
    ("6, 17", "train", "cnn5", 2.0),
    ("6, 17", "train", "conv3d", 2.0),
    ("6", "pipeline_cached_vs_first", "", 10.0),
    ("6", "pipeline_cached_vs_train", "", 20.0),
    ("6", "chunk_memory", "", 0.5),
)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and interquartile range of repeated measurements (``values`` kept)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "q1": None, "q3": None, "n": 0, "values": []}
    q1, q3 = (
        (statistics.quantiles(vals, n=4, method="inclusive")[i] for i in (0, 2))
        if len(vals) > 1
        else (
            vals[0],
            vals[0],
        )
    )
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "q1": q1,
        "q3": q3,
        "n": len(vals),
        "values": vals,
    }


def fmt_num(x: float | None) -> str:
    """About 3 significant digits; ``-`` for None."""
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_summary(s: dict[str, Any] | None) -> str:
    """``median [min-max]`` (just the median for a single value)."""
    if not s or s.get("median") is None:
        return "-"
    if s["n"] == 1:
        return fmt_num(s["median"])
    return f"{fmt_num(s['median'])} [{fmt_num(s['min'])}-{fmt_num(s['max'])}]"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A plain-text table with a header rule; ``right[i]`` right-aligns column ``i``."""
    cols = len(headers)
    right = list(right) + [False] * (cols - len(right))
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _median(row: dict[str, Any] | None, key: str = "scans_per_s") -> float | None:
    if not row or row.get("error"):
        return None
    return (row.get(key) or {}).get("median")


def _ceiling_cells(row: dict[str, Any], ceilings: dict[str, Any] | None) -> list[str]:
    """Achieved TFLOP/s of ``row`` as a percentage of the GEMM and conv ceilings of its precision."""
    peak = (ceilings or {}).get(row.get("precision_dtype", "float32")) or {}
    achieved = _median(row, "tflops")
    return [
        "-" if _ratio(achieved, peak.get(k)) is None else f"{100 * _ratio(achieved, peak[k]):.1f}%"
        for k in ("gemm", "conv")
    ]


def _speed_rows(
    rows: Sequence[dict[str, Any]], memory: bool, ceilings: dict[str, Any] | None = None
) -> list[list[str]]:
    out = []
    base = {r["model"]: r for r in rows if r["variant"] == "baseline"}
    for r in rows:
        label = model_label(r["model"])
        if r.get("error"):
            out.append(
                [label, r["variant"], "failed: " + r["error"].splitlines()[0][:60]]
                + [""] * (7 if memory else 5)
            )
            continue
        ratio = None if r["variant"] == "baseline" else _ratio(_median(r), _median(base.get(r["model"])))
        cells = [
            label,
            r["variant"],
            fmt_summary(r["scans_per_s"]),
            "" if ratio is None else f"{ratio:.2f}x",
            fmt_num(_median(r, "tflops")),
            fmt_num(r["gflop_per_scan"]),
            *_ceiling_cells(r, ceilings),
        ]
        if memory:
            cells += [fmt_num(r.get("peak_rss_mb")), fmt_num(r.get("train_mem_mb"))]
            if r.get("cuda_peak_mb") is not None:
                cells[-1] += f" (cuda {fmt_num(r['cuda_peak_mb'])})"
        out.append(cells)
    return out


def _grid_note(rows: Sequence[dict[str, Any]]) -> str:
    for r in rows:
        if r.get("spatial_size"):
            size = "x".join(str(s) for s in r["spatial_size"])
            slices = next((x["slices"] for x in rows if x.get("slices")), None)
            axis = next((x["axis"] for x in rows if x.get("axis")), None)
            return f"input {size}" + (
                f" ({slices} {axis} slices per scan for the slice models)" if slices else ""
            )
    return ""


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the measured ratios with :data:`TARGETS`; ``met`` is None where not measured."""
    checks = []
    train = result.get("train", [])

    def train_median(model: str, variant: str) -> float | None:
        return next(
            (
                _median(r)
                for r in train
                if r["model"] == model and r["variant"] == variant and not r.get("error")
            ),
            None,
        )

    for issues, what, model, target in TARGETS:
        if what == "train":
            value = _ratio(train_median(model, "fast"), train_median(model, "baseline"))
            name = f"{model_label(model)} training, fast (bundles' default) / baseline scans/s >= {target:g}x"
            met = None if value is None else value >= target
        elif what.startswith("pipeline"):
            pipe = result.get("pipeline") or {}
            if what == "pipeline_cached_vs_first":
                value = pipe.get("cached_vs_first_pass")
                name = f"cached data pipeline / first pass >= {target:g}x"
            else:
                value = pipe.get("cached_vs_fast_training")
                ref = pipe.get("fastest_fast_training_model")
                name = f"cached data pipeline / fastest fast-path training ({ref or '-'}) >= {target:g}x"
            met = None if value is None else value >= target
        else:
            chunk = result.get("chunk") or {}
            # CUDA: allocated memory; CPU: resident-memory increase over the process's start
            value = chunk.get("cuda_peak_ratio", chunk.get("train_mem_ratio"))
            name = (
                f"{model_label(chunk.get('model', 'resnet50'))} batch {chunk.get('batch_size', 8)} "
                f"chunked / plain training memory <= {target:g}"
            )
            met = None if value is None else value <= target
        checks.append({"target": name, "issues": issues, "value": value, "met": met})
    return checks


def format_report(result: dict[str, Any]) -> str:
    """The tables printed at the end of ``mri-slice-transfer bench``.

    Args:
        result: the dict of :func:`mri_slice_transfer.bench.run.run_bench`.

    Returns:
        the report, one section per measured part, then the targets and the total time.
    """
    parts = _header_section(result)
    sections = (_speed_sections, _chunk_section, _pipeline_section, _data_path_section, _prepare_section)
    for section in (*sections, _scaling_section):
        parts += section(result)
    parts += _targets_section(result)
    parts.append(f"\ntotal time {result.get('wall_time_s', 0):.1f} s")
    return "\n".join(parts)


def _header_section(result: dict[str, Any]) -> list[str]:
    """Device, threads, timing rule and variants."""
    s = result["settings"]
    env = result.get("environment", {})
    dev = env.get("device", {})
    return [
        "=" * 100,
        f"mri-slice-transfer bench on {s['device']}"
        + (f" ({env['bench_device_name']})" if env.get("bench_device_name") else "")
        + f", torch {env.get('packages', {}).get('torch', '?')}, {dev.get('torch_threads', '?')} threads, "
        f"cpu {dev.get('cpu', '?')}" + (" with AMX bf16" if dev.get("cpu_bf16_fast") else ""),
        f"scans/s: median [min-max] of {s['repeats']} timed blocks of >= {s['min_time']:g} s after "
        f"{s['warmup']} warm-up step(s); variants: "
        + "; ".join(f"{name} = {desc}" for name, desc in s["variant_descriptions"].items()),
    ]


def _speed_sections(result: dict[str, Any]) -> list[str]:
    """Training and inference speed tables."""
    s = result["settings"]
    parts: list[str] = []
    headers = ["model", "variant", "scans/s", "x base", "TFLOP/s", "GFLOP/scan", "% GEMM", "% conv"]
    ceilings = result.get("ceilings")
    parts: list[str] = _ceilings_section(ceilings)
    if result.get("train"):
        parts += [
            "",
            f"Training (forward, loss, backward, Adam step), batch {s['batch_size']}, "
            + _grid_note(result["train"])
            + "; % GEMM / % conv = achieved TFLOP/s / the ceiling of the row's precision",
            format_table(
                [*headers, "peak RSS MB", "+train MB"],
                _speed_rows(result["train"], memory=True, ceilings=ceilings),
                [False, False] + [True] * 8,
            ),
        ]
    if result.get("infer"):
        parts += [
            "",
            f"Inference (eval, no grad), batch {s['batch_size']}",
            format_table(
                headers,
                _speed_rows(result["infer"], memory=False, ceilings=ceilings),
                [False, False] + [True] * 6,
            ),
        ]
    return parts


def _ceilings_section(ceilings: dict[str, Any] | None) -> list[str]:
    """The measured GEMM / conv ceilings (:mod:`.ceiling`)."""
    if not ceilings:
        return []
    if ceilings.get("error"):
        return ["", "Ceilings: failed: " + ceilings["error"].splitlines()[0]]
    st = ceilings["settings"]
    n, c_in, h, w, c_out, k = st["conv_shape"]
    rows = [
        [name, fmt_num(v["gemm"]), fmt_num(v["conv"])] for name, v in ceilings.items() if name != "settings"
    ]
    return [
        "",
        f"Ceilings of this machine (best single call, TFLOP/s): GEMM {st['gemm_n']}^3; conv {c_in}->{c_out} "
        f"{k}x{k} on {n} x {h}x{w} channels-last, forward",
        format_table(["dtype", "GEMM", "conv"], rows, [False, True, True]),
    ]


def _chunk_section(result: dict[str, Any]) -> list[str]:
    """The memory option: plain vs chunked slice encoding."""
    parts: list[str] = []
    chunk = result.get("chunk")
    if chunk and chunk.get("rows"):
        rows = []
        plain = next((r for r in chunk["rows"] if r["slice_chunk_size"] is None), None)
        for r in chunk["rows"]:
            name = "plain" if r["slice_chunk_size"] is None else f"slice_chunk_size={r['slice_chunk_size']}"
            if r.get("error"):
                rows.append([name, "failed: " + r["error"].splitlines()[0][:60], "", "", "", ""])
                continue
            is_plain = r is plain
            rows.append(
                [
                    name,
                    fmt_summary(r["scans_per_s"]),
                    "" if is_plain else f"{fmt_num(_ratio(_median(r), _median(plain)))}x",
                    fmt_num(r.get("peak_rss_mb")),
                    fmt_num(r.get("train_mem_mb")),
                    ""
                    if is_plain or not plain
                    else f"{fmt_num(_ratio(r.get('train_mem_mb'), plain.get('train_mem_mb')))}x",
                ]
            )
        parts += [
            "",
            f"Memory option: {model_label(chunk['model'])} training, batch {chunk['batch_size']}, "
            f"{chunk['variant']} variant, plain vs chunked slice encoding (activation checkpointing)",
            format_table(
                ["config", "scans/s", "x plain", "peak RSS MB", "+train MB", "x plain (+train)"],
                rows,
                [False, True, True, True, True, True],
            ),
        ]
    return parts


def _pipeline_section(result: dict[str, Any]) -> list[str]:
    """The data pipeline: decode floor, first pass, cached pass."""
    parts: list[str] = []
    pipe = result.get("pipeline")
    if pipe and not pipe.get("error"):
        first = _median(pipe, "first_pass")
        parts += [
            "",
            f"Data pipeline: {pipe['n_scans']} template-space scans ({pipe['source']}, "
            f"{fmt_num(pipe['file_mb_mean'])} MB each) through the bundles' training transforms "
            f"-> {'x'.join(str(x) for x in pipe['output_shape'])}",
            format_table(
                ["stage", "scans/s", "x first pass"],
                [
                    [
                        "nibabel decode (floor)",
                        fmt_summary(pipe["decode"]),
                        fmt_num(_ratio(_median(pipe, "decode"), first)) + "x",
                    ],
                    [
                        f"first pass (decode + transforms, {pipe['cache_workers']} thread(s))",
                        fmt_summary(pipe["first_pass"]),
                        "1x",
                    ],
                    [
                        f"cached pass (CacheDataset + DataLoader, batch {pipe['batch_size']})",
                        fmt_summary(pipe["cached"]),
                        fmt_num(pipe.get("cached_vs_first_pass")) + "x",
                    ],
                ],
                [False, True, True],
            ),
        ]
        if pipe.get("cache_holds_tensors") is False:
            parts.append(
                "WARNING: the CacheDataset holds no transformed tensors (its transform chain starts with a "
                "Randomizable element, e.g. a nested Compose),\n         so every 'cached' epoch re-runs "
                "decoding and transforms."
            )
        if pipe.get("cached_vs_fast_training") is not None:
            parts.append(
                f"cached pass / fastest fast-path training ({pipe['fastest_fast_training_model']}, "
                f"{fmt_num(pipe['fastest_fast_training_scans_per_s'])} scans/s): "
                f"{fmt_num(pipe['cached_vs_fast_training'])}x"
            )
    elif pipe and pipe.get("error"):
        parts += ["", "Data pipeline: failed: " + pipe["error"].splitlines()[0]]
    return parts


def _data_path_cells(row: dict[str, Any]) -> list[str]:
    """The table cells of one data-path row."""
    head = [row["cache"], str(row["n_entries"])]
    if row.get("skipped") or row.get("error"):
        why = (
            f"not run ({row['skipped']})" if row.get("skipped") else "failed: " + row["error"].splitlines()[0]
        )
        return head + [why, "", "", ""]
    return head + [
        fmt_num(row["build_s"]),
        fmt_num(row["scans_per_s"]),
        fmt_num(row["peak_rss_mb"]),
        fmt_num(row["data_mb"]),
    ]


def _data_path_section(result: dict[str, Any]) -> list[str]:
    """The bundles' data paths at growing data-list sizes (``--data-path``)."""
    data = result.get("data_path")
    if not data:
        return []
    if data.get("error"):
        return ["", "Data path: failed: " + data["error"].splitlines()[0]]
    rows = data["rows"]
    n_files = next((r["n_files"] for r in rows if r.get("n_files")), data["files"].get("n_files"))
    parts = [
        "",
        f"Data path (train.json 'cache'): list entries cycling through {n_files} scans ({data['source']}), "
        f"input scale {data['input_scale']:g}, batch {data['batch_size']}, DataLoader in the measuring "
        "process; build = dataset ready (disk: entries already built by an earlier row are reused); "
        "+data MB = peak RSS minus RSS before the dataset",
        format_table(
            ["cache", "entries", "build s", "scans/s", "peak RSS MB", "+data MB"],
            [_data_path_cells(r) for r in rows],
            [False, True, True, True, True, True],
        ),
    ]
    disk = [r for r in rows if r["cache"] == "disk" and r.get("data_mb") is not None]
    if data.get("disk_memory_growth_mb") is not None and len(disk) >= 2:
        parts.append(
            f"disk cache +data MB from {disk[0]['n_entries']} to {disk[-1]['n_entries']} entries: "
            f"{fmt_num(disk[0]['data_mb'])} -> {fmt_num(disk[-1]['data_mb'])} MB "
            f"(change {fmt_num(data['disk_memory_growth_mb'])} MB)"
        )
    if data.get("disk_vs_fast_training") is not None:
        parts.append(
            f"slowest disk-cache scans/s / fastest fast-path training of this run "
            f"({data['fastest_fast_training_model']}): {fmt_num(data['disk_vs_fast_training'])}x"
        )
    return parts


def _prepare_section(result: dict[str, Any]) -> list[str]:
    """Raw-scan preparation time."""
    parts: list[str] = []
    prep = result.get("prepare")
    if prep:
        parts.append("")
        if prep.get("skipped"):
            parts.append("Raw-scan preparation: skipped (--skip-prepare)")
        elif prep.get("error"):
            parts.append("Raw-scan preparation: failed: " + prep["error"].splitlines()[0])
        else:
            parts.append(
                f"Raw-scan preparation (prepare_scan: registration, resampling, QC): "
                f"{fmt_summary(prep['seconds_per_scan'])} s per scan; {prep['scan']}, "
                f"{'x'.join(str(x) for x in prep['shape'])} voxels of {prep['voxel_mm']} mm, "
                f"status {prep['status'][-1]}"
            )
    return parts


def _scaling_section(result: dict[str, Any]) -> list[str]:
    """Fast-path training speed by batch size and input scale."""
    parts: list[str] = []
    scaling = result.get("scaling")
    if scaling:
        parts += [
            "",
            f"Scaling ({model_label(scaling['model'])}, {scaling['variant']} training): {scaling.get('png')}",
        ]
        parts.append(
            format_table(
                ["batch", "input", "slices", "scans/s", "slices/s"],
                [
                    [
                        str(p["batch_size"]),
                        "x".join(str(x) for x in p.get("spatial_size") or []),
                        str(p.get("slices")),
                        "failed" if p.get("error") else fmt_num(p["scans_per_s"]),
                        "" if p.get("error") else fmt_num(p["scans_per_s"] * p["slices"]),
                    ]
                    for p in scaling["points"]
                ],
                [True, False, True, True, True],
            )
        )
    return parts


def _targets_section(result: dict[str, Any]) -> list[str]:
    """Which targets were met."""
    parts: list[str] = []
    targets = result.get("targets")
    if targets:
        parts += ["", "Targets:"]
        for t in targets:
            status = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
            value = f"{fmt_num(t['value'])}{'x' if t['value'] is not None else ''}"
            parts.append(f"  [issue {t.get('issues', '6')}] {t['target']}: {value} -> {status}")
    return parts
