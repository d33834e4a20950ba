"""The bundles' data path (issue 14 item 1): in-RAM, on-disk or no cache, chosen by one option.

The on-disk store gives the in-RAM cache's tensors, is keyed by the scan file and the preprocessing
settings, never reads a half-written entry, rebuilds a corrupt one, and reports every bad scan together.
The 2-process DDP build-once check is in tests/test_bundles.py::test_two_process_gloo_ddp.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from test_bundles import write_tiny_dataset

from mri_slice_transfer.engine.disk_cache import BUILD_LOG, DiskCache, DiskCacheDataset, make_dataset
from mri_slice_transfer.engine.recipe import training_recipe
from mri_slice_transfer.engine.resize import with_resize
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.template import TEMPLATE_AFFINE
from mri_slice_transfer.transforms import get_train_transforms


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = write_tiny_dataset(tmp_path_factory.mktemp("disk_cache_scans"), (2, 1, 1))
    return [
        {"image": str(p), "label": np.asarray([i % 2], np.float32), "subject_id": p.name}
        for i, p in enumerate(sorted((folder / "images").glob("*.nii")))
    ]


def chain(scale: float = 0.5):
    return with_resize(get_train_transforms(), scale)


def built(store: DiskCache) -> list[str]:
    """The entries named in the build log, one per build."""
    log = store.folder / BUILD_LOG
    return [line.split()[3] for line in log.read_text().splitlines()] if log.is_file() else []


def test_disk_cache_gives_the_in_ram_cache_tensors(scans: list[dict], tmp_path: Path) -> None:
    ram = CacheDataset(scans, chain(), cache_rate=1.0, progress=False)
    disk = make_dataset(scans, chain(), cache="disk", cache_dir=tmp_path)
    assert isinstance(disk, DiskCacheDataset) and len(disk) == len(scans)
    for i in range(len(scans)):
        a, b = ram[i], disk[i]
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())  # float32, bit for bit
        assert torch.equal(a["image"].affine, b["image"].affine)
        assert b["subject_id"] == scans[i]["subject_id"] and np.array_equal(b["label"], scans[i]["label"])
    batch = next(iter(DataLoader(disk, batch_size=2, num_workers=1)))
    assert batch["image"].shape == (2, 1, 46, 54, 46)
    for path in (tmp_path).rglob("*.npz"):  # every entry loads without pickle
        with np.load(path, allow_pickle=False) as arrays:
            assert arrays["image"].dtype == np.float32


def test_entries_are_keyed_by_scan_file_and_settings(scans: list[dict], tmp_path: Path) -> None:
    records = scans * 3  # list entries that repeat a scan share its entry
    store = DiskCache(chain(), tmp_path)
    make_dataset(records, chain(), cache="disk", cache_dir=tmp_path)
    assert sorted(built(store)) == sorted({store.entry(r["image"]).name for r in scans})
    make_dataset(records, chain(), cache="disk", cache_dir=tmp_path)  # another run: nothing rebuilt
    assert len(built(store)) == len(scans)
    other = DiskCache(chain(0.6), tmp_path)  # another input scale: another folder
    assert other.folder != store.folder
    assert DiskCache(chain(), tmp_path).folder == store.folder
    edited = Path(scans[0]["image"])
    old_entry = store.entry(edited)
    img = nib.load(edited)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2 + 1, TEMPLATE_AFFINE), edited)
    os.utime(edited, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.entry(edited) != old_entry
    make_dataset(records, chain(), cache="disk", cache_dir=tmp_path)
    assert built(store)[-1] == store.entry(edited).name and len(built(store)) == len(scans) + 1


def test_a_killed_build_resumes_and_never_reads_a_half_written_entry(
    scans: list[dict], tmp_path: Path
) -> None:
    store = DiskCache(chain(), tmp_path)
    make_dataset(scans, chain(), cache="disk", cache_dir=tmp_path)
    first, second = (store.entry(r["image"]) for r in scans[:2])
    reference = DiskCache.read(first)[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # a truncated entry under its final name
    second.unlink()  # never written
    temp = store.folder / f".{second.name}.abcd1234.npz"  # what a killed atomic write leaves
    temp.write_bytes(data[:100])
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    dataset = make_dataset(scans, chain(), cache="disk", cache_dir=tmp_path)
    assert sorted(built(store)[len(scans) :]) == sorted([first.name, second.name])  # threads: any order
    assert not temp.exists()
    assert np.array_equal(dataset[0]["image"].numpy(), reference)


def test_a_corrupt_entry_is_rebuilt_with_a_warning_naming_the_scan(
    scans: list[dict], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = make_dataset(scans, chain(), cache="disk", cache_dir=tmp_path)
    entry = dataset.cache.entry(scans[1]["image"])
    reference = dataset[1]["image"].numpy().copy()
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the image array: same size, still a zip
    entry.write_bytes(bytes(data))
    assert DiskCache.is_complete(entry)
    with caplog.at_level(logging.WARNING, logger="mri_slice_transfer.engine.disk_cache"):
        item = dataset[1]
    assert np.array_equal(item["image"].numpy(), reference)
    assert "unreadable" in caplog.text and scans[1]["image"] in caplog.text
    assert built(dataset.cache)[-1] == entry.name


def test_bad_scans_are_reported_together_and_the_others_cached(scans: list[dict], tmp_path: Path) -> None:
    broken = tmp_path / "broken_T1w.nii.gz"
    broken.write_bytes(b"not a nifti")
    missing = tmp_path / "missing_T1w.nii.gz"
    records = scans + [{"image": str(broken)}, {"image": str(missing)}]
    with pytest.raises(DataListError) as info:
        make_dataset(records, chain(), cache="disk", cache_dir=tmp_path / "store")
    assert len(info.value.problems) == 2
    assert str(broken) in str(info.value) and f"{missing}: file not found" in str(info.value)
    assert len(built(DiskCache(chain(), tmp_path / "store"))) == len(scans)


def test_the_data_path_is_memory_for_the_demo_and_disk_for_real_data() -> None:
    real = {
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-4,
        "lr_schedule": "constant",
        "input_scale": 1,
        "cache": "disk",
    }
    demo = {**real, "cache": "memory"}
    assert training_recipe(None, None, real, demo).cache == "memory"
    assert training_recipe(None, "/data", real, demo).cache == "disk"
    with pytest.raises(ValueError, match="unknown cache 'dsk'.*did you mean 'disk'"):
        training_recipe(None, "/data", {**real, "cache": "dsk"}, demo)
    with pytest.raises(ValueError, match="unknown cache 'ram'"):
        make_dataset([], chain(), cache="ram")
