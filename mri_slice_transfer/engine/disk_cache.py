"""The bundles' training / validation datasets: preprocessed scans kept in RAM, on disk, or nowhere.

:func:`make_dataset` is what ``train.json`` references (``train#dataset``, ``validate#dataset``). One
option, ``cache`` (:class:`~mri_slice_transfer.vocabulary.DataCache`), picks the data path:

- ``memory``: MONAI ``CacheDataset``: every preprocessed scan in RAM in every process (3.6 MB per
  full-size float32 scan; the demo's default);
- ``disk``: :class:`DiskCacheDataset`: the preprocessed scans in an on-disk store (:class:`DiskCache`)
  built once and shared by runs and DDP ranks; each item is read from disk when the DataLoader asks for it,
  so the resident memory does not grow with the cohort (the default for the user's data lists);
- ``none``: MONAI ``Dataset``: every scan decoded and preprocessed every epoch.

The on-disk store
    One folder per preprocessing setting, ``<root>/<settings digest>/`` (root: the ``cache_dir`` option,
    default ``cache_dir("scans")``, i.e. ``~/.cache/mri_slice_transfer/scans``); the digest is the
    sha256 of :func:`preprocessing_settings` (template grid, every transform's class and settings such as
    ``input_scale`` and the resampling mode, the package version and :data:`FORMAT_VERSION`), which the
    folder's ``settings.json`` spells out. In it one uncompressed ``.npz`` per scan holding ``image``
    (float32, the exact tensor the in-RAM cache would hold) and ``affine``, named by the sha256 of the
    scan's absolute path, size and modification time: an edited or replaced scan gets a new entry, and runs
    or ranks reading the same scans with the same settings share the entries.

    Entries are written atomically (:func:`mri_slice_transfer.fileio.atomic_path`), so a killed build
    leaves only temporary files, which are never read and are swept after an hour; the next run builds the
    missing entries. Entries are read with ``np.load(allow_pickle=False)``; zip stores a CRC-32 of each
    array, which ``np.load`` checks when it reads one, so a corrupt entry is detected, logged as a warning
    naming the scan, and rebuilt. ``builds.log`` gets one line per entry built (rank, pid, entry, scan).

Why not MONAI's ``PersistentDataset`` (1.6.1): it keys entries by the pickled data dict (the path and
the label, not the file's content), writes through ``shutil.move`` from a temporary folder (a copy, not an
atomic rename, when ``/tmp`` is another file system) without ``fsync``, detects only unpicklable files,
and has every DDP rank build every entry it reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import CacheDataset, Dataset, MetaTensor
from monai.transforms import Randomizable, Transform
from tqdm import tqdm

from mri_slice_transfer import __version__
from mri_slice_transfer.engine.distributed import is_distributed, rank, world_size
from mri_slice_transfer.engine.options import as_bool, as_optional
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.fileio import atomic_path, atomic_write_json
from mri_slice_transfer.paths import cache_dir as project_cache_dir
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE
from mri_slice_transfer.transforms.chains import find_scan_error
from mri_slice_transfer.vocabulary import DataCache, look_up

__all__ = [
    "BUILD_LOG",
    "FORMAT_VERSION",
    "DiskCache",
    "DiskCacheDataset",
    "default_cache_root",
    "make_dataset",
    "preprocessing_settings",
]

logger = logging.getLogger(__name__)

#: Version of the entry format and of the preprocessing code's output: bump it when a transform's output
#: changes without a change of its settings, so that old entries are not reused.
FORMAT_VERSION = 1
#: One line per entry built, in the settings folder.
BUILD_LOG = "builds.log"
SETTINGS_FILE = "settings.json"
_IMAGE, _AFFINE = "image", "affine"
#: Temporary files of :func:`~mri_slice_transfer.fileio.atomic_path` for an entry ``<sha256>.npz``.
_TEMP_ENTRY = re.compile(r"\.[0-9a-f]{64}\.npz\.[a-z0-9_]{8}\.npz")
#: A temporary entry older than this (seconds) belongs to a killed build and is deleted.
_STALE_TEMP_S = 3600.0
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
_SKIP = object()


def default_cache_root() -> Path:
    """Where the on-disk store lives unless ``cache_dir`` is set: ``cache_dir("scans")``."""
    return project_cache_dir("scans", create=False)


def _simple(value: Any, depth: int = 0) -> Any:
    """``value`` as a plain setting (numbers, strings, dtypes, tuples of them, the settings of a transform
    held by a transform, e.g. ``Resized``'s ``Resize``), or ``_SKIP``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, torch.dtype | np.dtype):
        return str(value)
    if isinstance(value, list | tuple):
        items = [_simple(v, depth) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else items
    if isinstance(value, Transform) and depth < 3:
        return _transform_settings(value, depth + 1)
    return _SKIP


def _transform_settings(step: Any, depth: int = 0) -> dict[str, Any]:
    """A transform's class and its public plain attributes (:func:`_simple`)."""
    name = f"{type(step).__module__}.{type(step).__qualname__}"
    if isinstance(step, Randomizable):
        raise ValueError(f"cannot cache the output of the random transform {name}")
    attrs = {k: _simple(v, depth) for k, v in sorted(vars(step).items()) if not k.startswith("_")}
    return {"transform": name, **{k: v for k, v in attrs.items() if v is not _SKIP}}


def _steps(transform: Callable) -> list[Callable]:
    """The transforms of a (nested) ``Compose``, in order."""
    inner = getattr(transform, "transforms", None)
    if inner is None:
        return [transform]
    return [step for t in inner for step in _steps(t)]


def preprocessing_settings(transform: Callable) -> dict[str, Any]:
    """What a cache entry depends on besides the scan: template grid, transforms and their settings.

    Args:
        transform: the preprocessing chain (a MONAI ``Compose``; nested ones are flattened).

    Returns:
        a JSON-able dict: ``format``, ``version``, ``template_shape``, ``template_affine`` and per
        transform its class and plain attributes (``keys``, ``mode``, ``input_scale``, ``dtype``, ...).

    Raises:
        ValueError: a transform is random (its output cannot be cached).
    """
    steps = [_transform_settings(step) for step in _steps(transform)]
    return {
        "format": FORMAT_VERSION,
        "version": __version__,
        "template_shape": list(TEMPLATE_SHAPE),
        "template_affine": np.asarray(TEMPLATE_AFFINE, dtype=float).tolist(),
        "transforms": steps,
    }


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _problem(path: str, exc: BaseException) -> str:
    """One line naming the scan and what is wrong with it."""
    scan_error = find_scan_error(exc)
    if scan_error is not None:
        return str(scan_error)
    if isinstance(exc, FileNotFoundError):
        return f"{path}: file not found"
    return f"{path}: {type(exc).__name__}: {exc}"


class DiskCache:
    """The on-disk store of one preprocessing chain (see the module docstring).

    Args:
        transform: the deterministic preprocessing chain whose output is stored.
        root: folder of the store (None, ``""`` or ``"null"``: :func:`default_cache_root`).
        image_key: the data dicts' key of the scan path.
    """

    def __init__(
        self, transform: Callable, root: str | os.PathLike | None = None, image_key: str = "image"
    ) -> None:
        self.transform = transform
        self.image_key = image_key
        self.settings = preprocessing_settings(transform)
        root = as_optional(root)
        self.root = Path(root).expanduser() if root else default_cache_root()
        self.folder = self.root / _sha256(self.settings)[:16]

    def entry(self, image: str | os.PathLike) -> Path:
        """The entry of a scan file: named by its absolute path, size and modification time.

        Raises:
            OSError: the file cannot be read (``FileNotFoundError`` when it is missing).
        """
        path = Path(image).absolute()
        stat = path.stat()
        return self.folder / f"{_sha256([str(path), stat.st_size, stat.st_mtime_ns])}.npz"

    @staticmethod
    def is_complete(entry: Path) -> bool:
        """Whether ``entry`` is a whole zip file with both arrays (reads only its central directory)."""
        try:
            with zipfile.ZipFile(entry) as archive:
                return {f"{_IMAGE}.npy", f"{_AFFINE}.npy"} <= set(archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    @staticmethod
    def read(entry: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(image, affine)`` of an entry; every byte is checked against the CRC-32 zip stores.

        Raises:
            OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile: a missing or corrupt entry.
        """
        with np.load(entry, allow_pickle=False) as arrays:
            return arrays[_IMAGE], arrays[_AFFINE]

    def write(self, image: str, entry: Path | None = None) -> Path:
        """Preprocess one scan and store it atomically; log the build in :data:`BUILD_LOG`.

        Raises:
            ScanError: the scan cannot be used (names the file).
        """
        entry = entry or self.entry(image)
        out = self.transform({self.image_key: str(image)})[self.image_key]
        affine = getattr(out, "affine", None)
        affine = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
        array = np.ascontiguousarray(torch.as_tensor(out).detach().cpu().numpy(), dtype=np.float32)
        with atomic_path(entry) as tmp:
            np.savez(tmp, **{_IMAGE: array, _AFFINE: affine})
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} rank={rank()} pid={os.getpid()} {entry.name} {image}\n"
        with open(self.folder / BUILD_LOG, "a", encoding="utf-8") as log:
            log.write(line)
        return entry

    def sweep(self) -> list[Path]:
        """Delete temporary entries older than an hour (left by a killed build); returns them."""
        cutoff = time.time() - _STALE_TEMP_S
        removed = []
        for cand in self.folder.iterdir() if self.folder.is_dir() else ():
            try:
                if _TEMP_ENTRY.fullmatch(cand.name) and cand.stat().st_mtime < cutoff:
                    cand.unlink()
                    removed.append(cand)
            except FileNotFoundError:  # another rank or run swept it first
                continue
        return removed

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / SETTINGS_FILE).is_file():
            atomic_write_json(self.folder / SETTINGS_FILE, self.settings)
        self.sweep()

    def build(
        self, images: Sequence[str], num_workers: int = 1, progress: bool = False
    ) -> tuple[dict[str, Path], list[str]]:
        """Make sure every scan of this process's share has a complete entry; build the others.

        Under DDP the distinct scans are dealt out to the ranks (scan ``i`` of the sorted list to rank
        ``i % world_size``), so each entry is built by one process; call :func:`make_dataset`, which then
        gathers every rank's problems.

        Args:
            images: scan paths (repeats allowed).
            num_workers: threads that build entries.
            progress: show a progress bar of the entries built.

        Returns:
            ``(entries, problems)``: the entry of every scan of this share that has one, and one line per
            scan that could not be used (naming it).
        """
        self._prepare_folder()
        share = sorted(set(map(str, images)))[rank() :: world_size()]
        entries, problems, todo = {}, [], []
        for image in share:
            try:
                entries[image] = self.entry(image)
            except OSError as exc:
                problems.append(_problem(image, exc))
                continue
            if not self.is_complete(entries[image]):
                todo.append(image)
        if todo:
            logger.info(
                "disk cache: preprocessing %d of %d scans into %s", len(todo), len(share), self.folder
            )

        def build_one(image: str) -> tuple[str, str | None]:
            try:
                self.write(image, entries[image])
            except Exception as exc:  # one broken scan is reported with the others
                return image, _problem(image, exc)
            return image, None

        with ThreadPoolExecutor(max(1, int(num_workers))) as pool:
            results = tqdm(
                pool.map(build_one, todo), total=len(todo), desc="disk cache", disable=not progress
            )
            failed = {image: problem for image, problem in results if problem is not None}
        for image, problem in failed.items():
            problems.append(problem)
            del entries[image]
        return entries, problems


class DiskCacheDataset(torch.utils.data.Dataset):
    """Data dicts whose image is read from a :class:`DiskCache` entry at each access.

    Items are the data dicts with ``image`` replaced by the stored ``MetaTensor`` (float32, with its
    affine). An unreadable entry is rebuilt with a warning naming the scan.

    Args:
        data: MONAI data dicts (``image`` = a scan path).
        cache: the store; every scan must have an entry (:func:`make_dataset` builds them).
    """

    def __init__(self, data: Sequence[dict], cache: DiskCache) -> None:
        self.data = list(data)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        record = self.data[index]
        image = str(record[self.cache.image_key])
        entry = self.cache.entry(image)
        try:
            array, affine = self.cache.read(entry)
        except _UNREADABLE as exc:
            logger.warning("disk cache entry %s of %s is unreadable (%s); rebuilding it", entry, image, exc)
            self.cache.write(image, entry)
            array, affine = self.cache.read(entry)
        tensor = MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(affine))
        return {**record, self.cache.image_key: tensor}


def _gather(problems: list[str]) -> list[str]:
    """Every rank's problems (the same list on every rank); ``problems`` itself without DDP."""
    if not is_distributed():
        return problems
    every: list[Any] = [None] * world_size()
    dist.all_gather_object(every, problems)
    return [p for part in every for p in part]


def make_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str | DataCache = DataCache.MEMORY,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 1,
    progress: bool | str = False,
) -> torch.utils.data.Dataset:
    """The training or validation dataset of a bundle run, on the data path ``cache`` names.

    Args:
        data: MONAI data dicts (``image`` = a scan path, ``label``, ...).
        transform: the deterministic preprocessing chain.
        cache: ``memory`` (``CacheDataset``), ``disk`` (:class:`DiskCacheDataset`) or ``none``
            (``Dataset``): see :class:`~mri_slice_transfer.vocabulary.DataCache`.
        cache_dir: root of the on-disk store (``disk`` only; None: :func:`default_cache_root`).
        num_workers: threads that preprocess scans for the in-RAM or on-disk cache.
        progress: show a progress bar while the on-disk store is built.

    Returns:
        the dataset.

    Raises:
        ValueError: ``cache`` is not a data path (with a "did you mean").
        DataListError: ``disk``: every scan that could not be preprocessed, each named, on every rank
            before training starts.
    """
    mode = look_up(cache, DataCache, "cache")
    workers = max(1, int(num_workers))
    if mode is DataCache.MEMORY:
        return CacheDataset(
            data=data, transform=transform, cache_rate=1.0, num_workers=workers, progress=False
        )
    if mode is DataCache.NONE:
        return Dataset(data=data, transform=transform)
    store = DiskCache(transform, cache_dir)
    images = [str(record[store.image_key]) for record in data]
    _, problems = store.build(images, num_workers=workers, progress=as_bool(progress))
    problems = _gather(problems)
    if problems:
        raise DataListError(problems)
    return DiskCacheDataset(data, store)
