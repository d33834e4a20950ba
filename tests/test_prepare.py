"""Preparing raw scans: orientations, DICOM, bad inputs, resume, QC (``mri_slice_transfer.prepare``).

The test scans are the 1 mm template T1 placed by a known affine pose and stored in several orientations
(field of view cropped around the brain to keep the test fast); every prepared scan must land within
2 mm mean displacement (over template brain voxels) of the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from mri_slice_transfer.errors import ScanError  # noqa: E402
from mri_slice_transfer.prepare.batch import prepare_scan, prepare_scans  # noqa: E402
from mri_slice_transfer.prepare.io import find_inputs, read_scan  # noqa: E402
from mri_slice_transfer.template import TEMPLATE_AFFINE, load_template, load_template_1mm  # noqa: E402

_RAS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
_FLIP = np.diag([-1.0, -1.0, 1.0])


def _rot(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pose(seed: int) -> np.ndarray:
    """Scan world (RAS mm) from template world: rotation <= 12 deg, shift <= 15 mm, scale 0.96-1.04."""
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = _rot(*rng.uniform(-12, 12, 3)) @ np.diag(rng.uniform(0.96, 1.04, 3))
    m[:3, 3] = rng.uniform(-15, 15, 3)
    return m


def _template_1mm_sitk() -> sitk.Image:
    t = load_template_1mm()
    img = sitk.GetImageFromArray(np.ascontiguousarray(t.t1.transpose(2, 1, 0)) * 1000.0)
    img.SetSpacing((1.0, 1.0, 1.0))
    img.SetDirection(tuple((_FLIP @ t.affine[:3, :3]).ravel()))
    img.SetOrigin(tuple(_FLIP @ t.affine[:3, 3]))
    return img


def _make_scan(src: sitk.Image, pose: np.ndarray, directions: np.ndarray) -> sitk.Image:
    """The template under ``pose`` on a 1 mm grid with voxel axes along ``directions`` (RAS columns)."""
    size = (160, 160, 160)  # 1 mm cube around the brain centre
    centre_tpl = np.array([0.0, -18.0, 18.0])  # brain centre, template world RAS
    centre = pose[:3, :3] @ centre_tpl + pose[:3, 3]
    lps_dir = _FLIP @ directions
    origin = _FLIP @ centre - lps_dir @ ((np.array(size) - 1) / 2.0)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.0, 1.0))
    ref.SetDirection(tuple(lps_dir.ravel()))
    ref.SetOrigin(tuple(origin))
    inv = np.linalg.inv(pose)  # scan world -> template world (RAS); ITK resample needs output -> input
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple((_FLIP @ inv[:3, :3] @ _FLIP).ravel()))
    tx.SetTranslation(tuple(_FLIP @ inv[:3, 3]))
    return sitk.Resample(src, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _orientation(code: str) -> np.ndarray:
    return np.array([_RAS[c] for c in code], float).T


def _write_dicom(img: sitk.Image, folder: Path) -> None:
    """Write ``img`` as an int16 DICOM series (one file per slice), as SimpleITK's examples do."""
    folder.mkdir()
    img = sitk.Cast(sitk.RescaleIntensity(img, 0, 2000), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    common = [
        ("0008|0060", "MR"),
        ("0020|000e", series_uid),
        ("0020|000d", series_uid + ".1"),
        (
            "0020|0037",
            "\\".join(
                str(v)
                for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
            ),
        ),
        ("0008|103e", "T1w test"),
    ]
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in common:
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0018|0050", str(img.GetSpacing()[2]))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(sl)


def _mean_displacement(record: dict, pose: np.ndarray) -> float:
    t = load_template()
    ijk = np.argwhere(t.mask).T.astype(float)
    pts = TEMPLATE_AFFINE[:3, :3] @ ijk + TEMPLATE_AFFINE[:3, 3:4]
    est = np.array(record["template_to_scan_ras"])
    diff = (est[:3, :3] - pose[:3, :3]) @ pts + (est[:3, 3:4] - pose[:3, 3:4])
    return float(np.linalg.norm(diff, axis=0).mean())


GOOD = ("ras", "lps", "pir", "oblique", "dicom", "upside")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One batch, run through the CLI with 2 workers: five good scans and three bad files."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    root = tmp_path_factory.mktemp("prepare")
    raw = root / "raw"
    raw.mkdir()
    src = _template_1mm_sitk()
    poses = {}
    specs = {
        "ras": ("RAS", "ras.nii.gz"),
        "lps": ("LPS", "lps.nrrd"),
        "pir": ("PIR", "pir.mha"),
        "oblique": ("oblique", "oblique.nii.gz"),
        "dicom": ("LPI", None),
        "upside": ("RAS", "upside.nii.gz"),  # head turned 180 degrees (e.g. a wrong header)
    }
    for i, (name, (code, filename)) in enumerate(specs.items()):
        poses[name] = _pose(i)
        if name == "upside":
            poses[name][:3] = np.diag([1.0, -1.0, -1.0]) @ poses[name][:3]
        dirs = _rot(20, -15, 10) @ _orientation("RAS") if code == "oblique" else _orientation(code)
        img = _make_scan(src, poses[name], dirs)
        if filename is None:
            _write_dicom(img, raw / "dicom")
        else:
            sitk.WriteImage(img, str(raw / filename))
    (raw / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not really a gzipped NIfTI file" * 10)
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((64, 64), dtype=np.float32), np.eye(4)),
        raw / "flat2d.nii.gz",
    )
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), np.eye(4)), raw / "empty.nii.gz")
    # a 3D image that is not a brain: registration runs but must be flagged, not accepted
    from scipy import ndimage

    blobs = ndimage.gaussian_filter(np.random.default_rng(1).random((80, 90, 80)), 3).astype(np.float32)
    nib.save(nib.Nifti1Image(blobs, np.diag([2.0, 2.0, 2.0, 1.0])), raw / "noise.nii.gz")

    from mri_slice_transfer.cli import main

    out = root / "out"
    code = main(["prepare", str(raw), "--out", str(out), "--workers", "2", "--threads", "1", "--no-progress"])
    return {"raw": raw, "out": out, "poses": poses, "code": code}


def test_find_inputs_recognises_formats_and_dicom_folder(batch):
    found = {p.name for p in find_inputs([batch["raw"]])}
    assert found == {
        "ras.nii.gz",
        "lps.nrrd",
        "pir.mha",
        "oblique.nii.gz",
        "dicom",
        "corrupt.nii.gz",
        "flat2d.nii.gz",
        "empty.nii.gz",
        "noise.nii.gz",
        "upside.nii.gz",
    }


def test_find_inputs_bids_and_csv(tmp_path):
    anat = tmp_path / "bids" / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_ses-1_T1w.nii.gz").write_bytes(b"")
    (anat / "sub-01_ses-1_FLAIR.nii.gz").write_bytes(b"")
    (tmp_path / "bids" / "sub-02" / "anat").mkdir(parents=True)
    (tmp_path / "bids" / "sub-02" / "anat" / "sub-02_T1w.nii").write_bytes(b"")
    assert [p.name for p in find_inputs([tmp_path / "bids"])] == ["sub-01_ses-1_T1w.nii.gz", "sub-02_T1w.nii"]
    (tmp_path / "list.csv").write_text("image,age\nbids/sub-02/anat/sub-02_T1w.nii,70\n")
    assert find_inputs([tmp_path / "list.csv"]) == [tmp_path / "bids" / "sub-02" / "anat" / "sub-02_T1w.nii"]


def test_every_orientation_and_dicom_within_2mm(batch):
    import pandas as pd

    table = pd.read_csv(batch["out"] / "manifest.csv", keep_default_na=False)
    assert batch["code"] == 1  # some inputs failed
    by_name = {Path(r["input"]).name.split(".")[0]: r for r in table.to_dict("records")}
    for name in GOOD:
        row = by_name[name]
        assert row["status"] == "ok", row
        record = json.loads(Path(row["output"]).with_name(f"{name}.json").read_text(encoding="utf-8"))
        err = _mean_displacement(record, batch["poses"][name])
        assert err <= 2.0, (name, err)
        img = nib.load(row["output"])
        assert img.shape == (91, 109, 91)
        np.testing.assert_allclose(img.affine, TEMPLATE_AFFINE)
        data = np.asarray(img.dataobj)
        assert np.all(data[~load_template().mask] == 0)  # template brain mask applied
        assert Path(row["qc"]).is_file() and Path(row["qc"]).stat().st_size > 1000
        assert Path(row["transform"]).is_file()
        sitk.ReadTransform(row["transform"])
    assert (batch["out"] / "qc.html").is_file()


def test_poor_registration_is_flagged(batch):
    import pandas as pd

    table = pd.read_csv(batch["out"] / "manifest.csv", keep_default_na=False)
    row = table[table["input"].str.endswith("noise.nii.gz")].iloc[0]
    assert row["status"] == "flagged" and row["quality"] == "flagged"
    assert "poor match" in row["note"]
    assert Path(row["qc"]).is_file()
    html = (batch["out"] / "qc.html").read_text(encoding="utf-8")
    assert html.index("noise.nii.gz") < html.index("ras.nii.gz")  # flagged before ok


def test_read_mgz_same_geometry_as_nifti(tmp_path):
    data = np.random.default_rng(2).random((20, 24, 22)).astype(np.float32)
    affine = np.array([[0, 0, -1.1, 80], [1.0, 0, 0, -100], [0, -1.2, 0, 90], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii.gz")
    nib.save(nib.MGHImage(data, affine), tmp_path / "a.mgz")
    a, b = read_scan(tmp_path / "a.nii.gz"), read_scan(tmp_path / "a.mgz")
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b), rtol=1e-5)


def test_bad_inputs_give_error_rows(batch):
    import pandas as pd

    table = pd.read_csv(batch["out"] / "manifest.csv", keep_default_na=False)
    errors = {Path(r["input"]).name: r["error"] for r in table.to_dict("records") if r["status"] == "error"}
    assert set(errors) == {"corrupt.nii.gz", "flat2d.nii.gz", "empty.nii.gz"}
    assert "could not be read" in errors["corrupt.nii.gz"]
    assert "2D" in errors["flat2d.nii.gz"]
    assert "all zeros" in errors["empty.nii.gz"]
    assert all(str(batch["raw"]) in e for e in errors.values())  # each message names its file


def test_rerun_skips_finished_scans(batch):
    table = prepare_scans([batch["raw"]], batch["out"], workers=1, threads=1, progress=False)
    status = dict(zip(table["input"].map(lambda p: Path(p).name), table["status"], strict=True))
    good = ("ras.nii.gz", "lps.nrrd", "pir.mha", "oblique.nii.gz", "dicom", "upside.nii.gz", "noise.nii.gz")
    assert all(status[n] == "skipped" for n in good)
    assert status["corrupt.nii.gz"] == "error"
    assert set(table["quality"][table["status"] == "skipped"]) == {"ok", "flagged"}


def test_cli_names_flagged_and_failed_scans_also_on_a_rerun(batch, capsys):
    from mri_slice_transfer.cli import main

    code = main(["prepare", str(batch["raw"]), "--out", str(batch["out"]), "--threads", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1  # errors remain errors
    assert f"flagged (prepared earlier): {batch['raw'] / 'noise.nii.gz'}: " in printed
    assert f"error: {batch['raw'] / 'corrupt.nii.gz'}: " in printed
    assert "ras.nii.gz" not in printed  # ok scans are only counted


def test_read_scan_errors(tmp_path):
    with pytest.raises(ScanError, match="not found"):
        read_scan(tmp_path / "missing.nii.gz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ScanError, match="unsupported file type"):
        read_scan(tmp_path / "x.txt")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), tmp_path / "four.nii.gz")
    with pytest.raises(ScanError, match="3 volumes"):
        read_scan(tmp_path / "four.nii.gz")


def test_read_nhdr_detached_header(tmp_path):
    """NRRD with a detached header (``.nhdr`` + ``.raw.gz``) is found once and read like ``.nrrd``."""
    data = np.random.default_rng(3).random((20, 24, 22)).astype(np.float32)
    img = sitk.GetImageFromArray(data)
    img.SetSpacing((1.0, 1.1, 1.2))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection(_orientation("PIR").flatten().tolist())
    sitk.WriteImage(img, str(tmp_path / "a.nhdr"), useCompression=True)
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nhdr", "a.nrrd", "a.raw.gz"]
    assert sorted(p.name for p in find_inputs([tmp_path])) == ["a.nhdr", "a.nrrd"]  # not the data file
    a, b = read_scan(tmp_path / "a.nhdr"), read_scan(tmp_path / "a.nrrd")
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin())
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing())
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), data)


def test_truncated_output_is_prepared_again(batch, caplog):
    """A finished scan is recognised by the size + sha256 recorded for its outputs, not by its header."""
    import hashlib
    import logging

    import pandas as pd

    table = pd.read_csv(batch["out"] / "manifest.csv", keep_default_na=False)
    row = table[table["input"].map(lambda p: Path(p).name) == "ras.nii.gz"].iloc[0]
    output = Path(row["output"])
    data = output.read_bytes()
    assert row["output_sha256"] == hashlib.sha256(data).hexdigest()
    assert int(row["output_bytes"]) == len(data)
    output.write_bytes(data[: len(data) // 2])  # truncated later: the header still reads
    assert nib.load(str(output)).shape == (91, 109, 91)
    with caplog.at_level(logging.WARNING):
        again = prepare_scan(batch["raw"] / "ras.nii.gz", batch["out"], name="ras")
    assert again["status"] == "ok"
    assert "no longer match" in caplog.text and "ras.nii.gz" in caplog.text
    assert output.read_bytes() == data  # the same registration, written again in full
    assert prepare_scan(batch["raw"] / "ras.nii.gz", batch["out"], name="ras")["status"] == "skipped"


def test_read_scan_names_permission_denied_and_broken_links(tmp_path, monkeypatch):
    import os

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), path)
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(ScanError, match="dangling symbolic link"):
        read_scan(tmp_path / "dangling.nii.gz")
    (tmp_path / "loop.nii.gz").symlink_to(tmp_path / "loop.nii.gz")
    with pytest.raises(ScanError, match="link loop"):
        read_scan(tmp_path / "loop.nii.gz")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root ignores chmod 000: simulate it
    with pytest.raises(ScanError, match="permission denied") as info:
        read_scan(path)
    assert "corrupt" not in str(info.value) and str(path) in str(info.value)


def test_output_names_keep_subject_and_session_and_stay_when_files_join(batch, tmp_path):
    """BIDS and UK Biobank inputs get BIDS-derivative names; a second scan joining keeps the first's name."""
    import shutil

    import pandas as pd

    anat = tmp_path / "bids" / "sub-01" / "ses-bl" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(batch["raw"] / "ras.nii.gz", anat / "sub-01_ses-bl_T1w.nii.gz")
    first = tmp_path / "ukb" / "1000001_20252_2_0" / "T1"
    first.mkdir(parents=True)
    shutil.copy(batch["raw"] / "ras.nii.gz", first / "T1.nii.gz")
    out = tmp_path / "out"
    table = prepare_scans([tmp_path / "bids", tmp_path / "ukb"], out, workers=1, threads=1, progress=False)
    space = "space-MNI152NLin2009aSym_res-2"
    assert [Path(p).relative_to(out).as_posix() for p in table["output"]] == [
        f"sub-01/ses-bl/anat/sub-01_ses-bl_{space}_T1w.nii.gz",
        f"sub-1000001/ses-2/anat/sub-1000001_ses-2_{space}_T1w.nii.gz",
    ]
    assert table[["subject_id", "session_id"]].values.tolist() == [
        ["sub-01", "ses-bl"],
        ["sub-1000001", "ses-2"],
    ]
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert manifest["subject_id"].tolist() == ["sub-01", "sub-1000001"]
    # a second UK Biobank scan, also named T1.nii.gz, joins the batch: the first keeps its name and is skipped
    second = tmp_path / "ukb" / "1000002_20252_2_0" / "T1"
    second.mkdir(parents=True)
    shutil.copy(batch["raw"] / "lps.nrrd", second / "T1.nrrd")
    again = prepare_scans([tmp_path / "bids", tmp_path / "ukb"], out, workers=1, threads=1, progress=False)
    assert again["status"].tolist() == ["skipped", "skipped", "ok"]
    assert again["output"].tolist()[:2] == table["output"].tolist()
    assert Path(again["output"][2]).name == f"sub-1000002_ses-2_{space}_T1w.nii.gz"


def test_same_subject_of_two_sites_gets_a_hash_before_the_bids_suffix():
    from mri_slice_transfer.prepare.batch import _unique_names

    names = _unique_names(
        [Path("/site1/sub-01/anat/sub-01_T1w.nii.gz"), Path("/site2/sub-01/anat/sub-01_T1w.nii")]
    )
    assert names[0] != names[1]
    assert all(n.startswith("sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_hash-") for n in names)
    assert all(n.endswith("_T1w") for n in names)  # still found as *_T1w by datalist --bids
