"""Fast tests of the atomic writers' guarantees (fileio.py) that no other fast test reaches, for mutation
testing of the module (scripts/mutation.sh, docs/testing.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mri_slice_transfer import fileio
from mri_slice_transfer.fileio import (
    atomic_path,
    atomic_write_json,
    file_sha256,
    fsync_file,
    sweep_temp_files,
)


def test_fsync_of_a_folder_syncs_the_folder_itself(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    folder = str(tmp_path.resolve())
    fsync_file(tmp_path)
    assert synced == [folder]  # on POSIX a new name is durable only once its folder is synced
    atomic_write_json(tmp_path / "a.json", {})
    assert Path(synced[1]).name.startswith(".a.json.") and synced[2:] == [folder]  # the file, then the folder


def test_sha256_of_a_file_larger_than_one_block_is_that_of_its_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * (5 << 12) + b"tail"  # 5 MiB and 4 bytes: several 1 MiB blocks and a rest
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path) != hashlib.sha256(b"").hexdigest()


def test_json_outputs_are_indented_two_spaces_and_end_with_a_newline(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "metrics.json", {"epoch": 3, "val": {"mae": 2.5}})
    assert path.read_text(encoding="utf-8") == '{\n  "epoch": 3,\n  "val": {\n    "mae": 2.5\n  }\n}\n'
    assert json.loads(path.read_text(encoding="utf-8")) == {"epoch": 3, "val": {"mae": 2.5}}


def test_sweep_finds_the_temporary_file_of_a_killed_nii_gz_write(tmp_path: Path) -> None:
    dest = tmp_path / "sub-01_T1w.nii.gz"  # two suffixes: the temporary name ends with both
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"half a scan")
        os.link(tmp, tmp_path / "left.bin")  # keep its bytes: the sweep below removes the name
        os.utime(tmp, (1, 1))  # as if the writer had been killed long ago
        assert tmp.name.endswith(".nii.gz")
        assert sweep_temp_files([tmp_path / "sub-01_T1w.nii"], older_than=2) == []  # another destination's
        assert sweep_temp_files([dest], older_than=2) == [tmp]
        os.replace(tmp_path / "left.bin", tmp)  # let the writer finish normally
    assert dest.read_bytes() == b"half a scan"


def test_sweep_goes_on_past_a_destination_whose_folder_does_not_exist(tmp_path: Path) -> None:
    stale = tmp_path / ".checkpoint.pt.ab_cd123.pt"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    assert sweep_temp_files([tmp_path / "gone" / "model.pt", tmp_path / "checkpoint.pt"]) == [stale]
