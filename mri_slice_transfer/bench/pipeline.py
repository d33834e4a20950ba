"""Data-pipeline and raw-scan preparation timings (run inside a measurement process).

Data pipeline, on template-space NIfTI files through the bundles' training preprocessing
(``with_resize(get_train_transforms(), input_scale)``):

- *nibabel decode* (the floor): ``nib.load(path).get_fdata(dtype=float32)``, what any pipeline pays;
- *first pass*: building a MONAI ``CacheDataset`` (load, resample to the template grid, z-score);
- *cached pass*: epochs over that ``CacheDataset`` through a MONAI ``DataLoader`` (copy of the cached
  tensors and collation), which is what the bundles' training loop reads after the first epoch.

Data path (``--data-path``, issue 14): the bundles' three training data paths
(:func:`mri_slice_transfer.engine.make_dataset`: ``memory``, ``disk``, ``none``) at growing data-list
sizes whose entries repeat a few scan files: the time to build the dataset, scans/s of a DataLoader pass
and the process's resident memory (:func:`measure_data_path`, one fresh process per row).

Raw-scan preparation: :func:`mri_slice_transfer.prepare.batch.prepare_scan` (registration to the
template, resampling, QC) on one raw 1 mm scan, seconds per scan.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE, load_template_1mm

__all__ = [
    "PIPELINE_SOURCES",
    "write_phantom_scans",
    "write_synthetic_scans",
    "make_raw_scan",
    "measure_pipeline",
    "measure_data_path",
    "write_scan_folder",
    "measure_prepare",
]

#: Where the pipeline's template-space scans come from: ``synthetic`` (the demo-data generator, about
#: 0.7 s per scan to make) or ``phantom`` (an ellipsoid "brain" with noise, instant).
PIPELINE_SOURCES: tuple[str, ...] = ("synthetic", "phantom")


def write_phantom_scans(out: str | PathLike, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` template-grid int16 NIfTIs (``.nii.gz``, template affine): noisy ellipsoids.

    The voxels outside the ellipsoid are 0, so the files compress about like skull-stripped scans.
    """
    from mri_slice_transfer.data.synthetic import write_nifti

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.indices(TEMPLATE_SHAPE, dtype=np.float32)
    centre = (np.array(TEMPLATE_SHAPE, dtype=np.float32) - 1) / 2
    paths = []
    for i in range(n):
        radii = np.array([36.0, 46.0, 38.0]) * rng.uniform(0.9, 1.1)
        r2 = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
        inside = r2 <= 1.0
        texture = (
            600 + 250 * np.sin(grid[0] / 5 + i) * np.cos(grid[1] / 7) + rng.normal(0, 40, TEMPLATE_SHAPE)
        )
        data = np.where(inside, np.clip(texture, 1, None), 0).astype(np.int16)
        path = out / f"phantom_{i:03d}.nii.gz"
        write_nifti(data, np.array(TEMPLATE_AFFINE), path, code=4)
        paths.append(path)
    return paths


def write_synthetic_scans(out: str | PathLike, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` template-space demo scans (:func:`~mri_slice_transfer.data.synthetic.generate_cohort`)."""
    from mri_slice_transfer.data.synthetic import generate_cohort

    folder = generate_cohort(
        task="adni_ad", space="template", n=n, seed=seed, out=out, workers=1, progress=False
    )
    return sorted((Path(folder) / "images").glob("*.nii.gz"))


def _scan_files(data_dir: str | PathLike, n: int) -> list[Path]:
    files = sorted(p for p in Path(data_dir).iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise FileNotFoundError(f"no .nii / .nii.gz files in {data_dir}")
    return files[: max(1, int(n))]


def _blocks(fn: Any, repeats: int, min_time: float) -> list[tuple[int, float]]:
    """``(items, seconds)`` per block; a block calls ``fn()`` (returns items done) until ``min_time``."""
    out = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        items = 0
        while True:
            items += fn()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        out.append((items, elapsed))
    return out


def _pipeline_files(
    tmp: Path, source: str, data_dir: str | None, n_scans: int, seed: int
) -> tuple[list[Path], str]:
    """The scans :func:`measure_pipeline` reads (written into ``tmp`` unless ``data_dir``), their source."""
    if data_dir:
        return _scan_files(data_dir, n_scans), f"folder {data_dir}"
    if source == "synthetic":
        return write_synthetic_scans(tmp / "cohort", n_scans, seed), source
    if source == "phantom":
        return write_phantom_scans(tmp / "phantom", n_scans, seed), source
    raise ValueError(f"unknown source {source!r}; choose one of {', '.join(PIPELINE_SOURCES)}")


def measure_pipeline(
    n_scans: int = 8,
    source: str = "synthetic",
    data_dir: str | None = None,
    input_scale: float = 1.0,
    batch_size: int = 8,
    repeats: int = 3,
    min_time: float = 2.0,
    cache_workers: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Scans per second of the decode floor, the uncached first pass and the cached pass.

    Args:
        n_scans: number of scans (written to a temporary folder unless ``data_dir``).
        source: ``"synthetic"`` or ``"phantom"`` (see :data:`PIPELINE_SOURCES`).
        data_dir: a folder of NIfTI files to use instead (the first ``n_scans``).
        input_scale: the bundles' ``input_scale`` (an area resize is appended when not 1).
        batch_size: DataLoader batch size of the cached pass.
        repeats: timed blocks per stage (the first pass builds one ``CacheDataset`` per block).
        min_time: minimum seconds per block of the decode floor and of the cached pass.
        cache_workers: ``CacheDataset(num_workers=...)`` threads for the first pass.
        seed: seed of the generated scans.
    """
    from monai.data import CacheDataset, DataLoader

    from mri_slice_transfer.engine.resize import with_resize
    from mri_slice_transfer.transforms import get_train_transforms

    with tempfile.TemporaryDirectory(prefix="mst_bench_data_") as tmp:
        start = time.perf_counter()
        files, source = _pipeline_files(Path(tmp), source, data_dir, n_scans, seed)
        make_s = time.perf_counter() - start
        n = len(files)
        records = [{"image": str(f)} for f in files]
        transform = with_resize(get_train_transforms(), input_scale)

        def decode() -> int:
            for f in files:
                nib.load(f).get_fdata(dtype=np.float32, caching="unchanged")
            return n

        floor = _blocks(decode, repeats, min_time)

        first: list[tuple[int, float]] = []
        dataset = None
        for _ in range(max(1, int(repeats))):
            t = time.perf_counter()
            dataset = CacheDataset(
                records, transform, cache_rate=1.0, num_workers=cache_workers, progress=False
            )
            first.append((n, time.perf_counter() - t))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)

        def epoch() -> int:
            return sum(int(batch["image"].shape[0]) for batch in loader)

        cached = _blocks(epoch, repeats, min_time)
        # MONAI caches the output of the transforms before the first Randomizable one; a chain that
        # starts with one (e.g. a nested Compose) leaves only the file paths in the cache.
        cached_item = (getattr(dataset, "_cache", None) or [None])[0]
        cache_holds_tensors = isinstance(cached_item, dict) and hasattr(cached_item.get("image"), "shape")
        shape = list(dataset[0]["image"].shape)
        sizes = [f.stat().st_size for f in files]

    def rates(blocks: Sequence[tuple[int, float]]) -> list[float]:
        return [items / s for items, s in blocks]

    return {
        "source": source,
        "n_scans": n,
        "make_scans_s": make_s,
        "file_mb_mean": float(np.mean(sizes)) / 2**20,
        "input_scale": float(input_scale),
        "output_shape": shape,
        "batch_size": int(batch_size),
        "cache_workers": int(cache_workers),
        "cache_holds_tensors": bool(cache_holds_tensors),
        "decode_scans_per_s": rates(floor),
        "first_pass_scans_per_s": rates(first),
        "cached_scans_per_s": rates(cached),
    }


def write_scan_folder(out: str, n: int, source: str = "phantom", seed: int = 0) -> dict[str, Any]:
    """Write ``n`` template-space scans into ``out`` (:data:`PIPELINE_SOURCES`) for later measurements.

    Returns:
        ``folder`` (where the files are), ``n_files`` and ``file_mb_mean``.
    """
    files, _ = _pipeline_files(Path(out), source, None, n, seed)
    folder = files[0].parent
    return {
        "folder": str(folder),
        "n_files": len(files),
        "file_mb_mean": float(np.mean([f.stat().st_size for f in files])) / 2**20,
    }


def measure_data_path(
    cache: str,
    n_entries: int,
    data_dir: str,
    cache_dir: str | None = None,
    input_scale: float = 1.0,
    batch_size: int = 8,
    min_time: float = 2.0,
    cache_workers: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Build one bundle training dataset of ``n_entries`` list entries and time a DataLoader pass over it.

    The entries cycle through the scan files of ``data_dir`` (entry ``i`` is file ``i % n_files``), as a
    data list repeating scans would. The pass shuffles and stops after one epoch or ``min_time`` seconds,
    whichever comes first (scans/s does not depend on the list's length for ``disk`` and ``none``). The
    DataLoader reads in this process (``num_workers=0``), so the peak resident memory is all of it.

    Args:
        cache: the data path (``memory``, ``disk`` or ``none``).
        n_entries: data-list entries.
        data_dir: folder of template-space NIfTI files.
        cache_dir: root of the on-disk store (``disk``).
        input_scale: the bundles' ``input_scale``.
        batch_size: DataLoader batch size.
        min_time: seconds after which the pass stops.
        cache_workers: threads that build the in-RAM or on-disk cache.
        seed: shuffling seed.

    Returns:
        ``cache``, ``n_entries``, ``n_files``, ``build_s``, ``scans_read``, ``scans_per_s``,
        ``rss_before_mb`` (after imports), ``peak_rss_mb`` and ``data_mb`` (peak minus before).
    """
    import torch
    from monai.data import DataLoader

    from mri_slice_transfer.bench.process import peak_rss_mb, rss_mb
    from mri_slice_transfer.engine.disk_cache import make_dataset
    from mri_slice_transfer.engine.resize import with_resize
    from mri_slice_transfer.transforms import get_train_transforms

    files = _scan_files(data_dir, 10**9)
    label = np.zeros(1, np.float32)
    records = [{"image": str(files[i % len(files)]), "label": label} for i in range(int(n_entries))]
    transform = with_resize(get_train_transforms(), input_scale)
    transform({"image": str(files[0])})  # warm: the template and the transforms' one-off allocations
    before = rss_mb()
    start = time.perf_counter()
    dataset = make_dataset(records, transform, cache=cache, cache_dir=cache_dir, num_workers=cache_workers)
    build_s = time.perf_counter() - start
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    read = 0
    start = time.perf_counter()
    for batch in loader:
        read += int(batch["image"].shape[0])
        if time.perf_counter() - start >= min_time:
            break
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    return {
        "cache": str(cache),
        "n_entries": int(n_entries),
        "n_files": len(files),
        "build_s": build_s,
        "scans_read": read,
        "scans_per_s": read / seconds,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "data_mb": None if before is None else peak - before,
    }


def make_raw_scan(path: str | PathLike, seed: int = 0) -> Path:
    """Write a raw-like 1 mm scan: the 1 mm template T1 (197 x 233 x 189) with an oblique scanner pose.

    The voxels are the template's, the affine rotates them by a few degrees and shifts them by a few mm,
    so registration has to find a real transform. Stored as int16, scanner ``qform`` / ``sform``.
    """
    from mri_slice_transfer.data.raw import rotation_matrix
    from mri_slice_transfer.data.synthetic import write_nifti

    rng = np.random.default_rng(seed)
    template = load_template_1mm()
    rot = rotation_matrix(rng.uniform(-8.0, 8.0, 3))
    affine = np.array(template.affine, dtype=np.float64)
    affine[:3, :3] = rot @ affine[:3, :3]
    affine[:3, 3] = rot @ affine[:3, 3] + rng.uniform(-10.0, 10.0, 3)
    data = np.clip(np.rint(template.t1 * 1000.0), 0, np.iinfo(np.int16).max).astype(np.int16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(data, affine, path, code=1)
    return path


def measure_prepare(raw_scan: str | None = None, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Seconds per scan of :func:`~mri_slice_transfer.prepare.batch.prepare_scan` on one raw scan.

    The template images are loaded once before timing (a batch run pays that once, not per scan).

    Args:
        raw_scan: a raw scan to time; None: :func:`make_raw_scan` writes one.
        repeats: timed preparations (each into a fresh output folder).
        seed: pose of the generated scan.
    """
    from mri_slice_transfer.prepare.batch import prepare_scan
    from mri_slice_transfer.prepare.registration import template_images

    with tempfile.TemporaryDirectory(prefix="mst_bench_prepare_") as tmp:
        path = Path(raw_scan) if raw_scan else make_raw_scan(Path(tmp) / "raw_T1w.nii.gz", seed)
        img = nib.load(path)
        template_images()  # warm: read the template once
        seconds, statuses, rows = [], [], []
        for i in range(max(1, int(repeats))):
            start = time.perf_counter()
            row = prepare_scan(path, Path(tmp) / f"out{i}", skip_existing=False)
            seconds.append(time.perf_counter() - start)
            statuses.append(str(row.get("status")))
            rows.append(row)
        if any(s == "error" for s in statuses):
            raise RuntimeError(f"prepare_scan failed on {path}: {rows[statuses.index('error')].get('error')}")
    return {
        "scan": str(raw_scan) if raw_scan else "generated: 1 mm template T1 with an oblique pose",
        "shape": list(img.shape[:3]),
        "voxel_mm": [round(float(z), 3) for z in img.header.get_zooms()[:3]],
        "seconds": seconds,
        "status": statuses,
        "correlation": rows[-1].get("correlation"),
    }
