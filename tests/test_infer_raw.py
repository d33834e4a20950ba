"""Bundle inference on raw scans (``inference.json --prepare true``), issue 5.

Two raw 1 mm scans (the template under known poses, stored RAS NIfTI and LPS NRRD; one carries a bright
block so that the two predictions differ) and a corrupt file go through the AD bundle with
``--prepare true``; the same scans prepared separately with ``prepare_scan`` go through it without.
A tiny network (``TINY_NET``) with a checkpoint saved by the test stands in for a trained model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sitk = pytest.importorskip("SimpleITK")

from monai.bundle import ConfigParser  # noqa: E402
from test_bundles import TINY_NET, copy_bundle, run_workflow  # noqa: E402
from test_prepare import _make_scan, _orientation, _pose, _template_1mm_sitk  # noqa: E402

from mri_slice_transfer.prepare.batch import prepare_scan  # noqa: E402

GOOD = ("a.nii.gz", "b.nrrd")
#: Columns of the predictions CSV without ``--prepare`` (unchanged by this feature).
PLAIN_COLUMNS = ["subject_id", "session_id", "image", "probability", "logit", "predicted", "status", "error"]


def _bundle_with_model(root: Path, name: str) -> Path:
    """A bundle copy whose ``models/model.pt`` is a freshly built (seeded) ``TINY_NET``."""
    bundle = copy_bundle(root, name)
    torch.manual_seed(0)
    net = ConfigParser({"net": TINY_NET}).get_parsed_content("net")
    (bundle / "models").mkdir()
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle


def _infer(bundle: Path, **override) -> pd.DataFrame:
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", network_def=TINY_NET, **override)
    return pd.read_csv(override["predictions_csv"], keep_default_na=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Raw scans -> inference with --prepare; the same scans prepared by prepare_scan -> inference."""
    root = tmp_path_factory.mktemp("infer_raw")
    raw = root / "raw"
    raw.mkdir()
    src = _template_1mm_sitk()
    sitk.WriteImage(_make_scan(src, _pose(0), _orientation("RAS")), str(raw / GOOD[0]))
    arr = sitk.GetArrayFromImage(src)  # z, y, x
    arr[70:95, 110:135, 80:105] *= 1.6  # a bright block in the brain: scan b looks different from a
    src_b = sitk.GetImageFromArray(arr)
    src_b.CopyInformation(src)
    sitk.WriteImage(_make_scan(src_b, _pose(1), _orientation("LPS")), str(raw / GOOD[1]))
    (raw / "zz_corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not really a gzipped NIfTI file" * 10)

    bundle = _bundle_with_model(root, "adni_ad")
    prepared_dir = root / "prepared"
    from_raw = _infer(
        bundle,
        input=str(raw),
        prepare="true",  # as `monai.bundle run --prepare true` passes it
        prepare_dir=str(prepared_dir),
        predictions_csv=str(root / "pred_raw.csv"),
    )

    separate = root / "separate"
    rows = [prepare_scan(raw / name, separate) for name in GOOD]
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    from_prepared = _infer(
        bundle, input=str(separate / "*.nii.gz"), predictions_csv=str(root / "pred_prepared.csv")
    )
    return {
        "root": root,
        "raw": raw,
        "prepared_dir": prepared_dir,
        "from_raw": from_raw,
        "separate": {Path(r["input"]).name: r for r in rows},
        "from_prepared": from_prepared,
    }


def _by_input(table: pd.DataFrame) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in table.to_dict("records")}


def test_raw_scans_give_the_same_predictions_as_prepared_scans(runs: dict) -> None:
    raw = _by_input(runs["from_raw"])
    prepared = {Path(r["image"]).name: r for r in runs["from_prepared"].to_dict("records")}
    assert len(prepared) == 2 and all(r["status"] == "ok" for r in prepared.values())
    got, want = [], []
    for name in GOOD:
        row = raw[name]
        assert row["status"] == "ok" and row["prepare_status"] == "ok", row
        ref = prepared[Path(runs["separate"][name]["output"]).name]
        got.append(float(row["probability"]))
        want.append(float(ref["probability"]))
        assert row["predicted"] == ref["predicted"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert abs(got[0] - got[1]) > 1e-4  # the scans differ, so a mix-up of rows would be caught


def test_corrupt_raw_scan_gets_an_error_row(runs: dict) -> None:
    table = runs["from_raw"]
    assert len(table) == 3
    bad = _by_input(table)["zz_corrupt.nii.gz"]
    assert bad["status"] == "error" and bad["prepare_status"] == "error"
    assert bad["error"].startswith("preparation failed: ")
    assert str(runs["raw"] / "zz_corrupt.nii.gz") in bad["error"] and "could not be read" in bad["error"]
    assert bad["probability"] == "" and bad["predicted"] == "" and bad["qc_png"] == ""
    assert (table["status"] == "ok").sum() == 2


def test_predictions_csv_reports_the_preparation(runs: dict) -> None:
    table = runs["from_raw"]
    assert list(table.columns) == [
        "subject_id", "session_id", "input", "image", "probability", "logit", "predicted", "status", "error",
        "prepare_status", "flagged", "prepare_correlation", "qc_png", "prepare_note",
    ]  # fmt: skip
    for name in GOOD:
        row = _by_input(table)[name]
        assert row["input"] == str((runs["raw"] / name).resolve())
        assert Path(row["image"]).parent == runs["prepared_dir"]
        assert Path(row["image"]).is_file()
        qc = Path(row["qc_png"])
        assert qc.parent == runs["prepared_dir"] and qc.name.endswith("_qc.png") and qc.is_file()
        assert qc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(row["flagged"]) == "False" and 0.65 < float(row["prepare_correlation"]) <= 1.0
    assert (runs["prepared_dir"] / "manifest.csv").is_file() and (runs["prepared_dir"] / "qc.html").is_file()


def test_without_prepare_the_predictions_csv_is_unchanged(runs: dict) -> None:
    assert list(runs["from_prepared"].columns) == PLAIN_COLUMNS


def test_rerun_reuses_prepared_scans(runs: dict) -> None:
    """The brain-age bundle, given ``--input_dir`` and the same prepare_dir, registers nothing again."""
    bundle = _bundle_with_model(runs["root"] / "rerun", "ukbb_brain_age")
    table = _infer(
        bundle,
        input_dir=str(runs["raw"]),
        prepare=True,
        prepare_dir=str(runs["prepared_dir"]),
        predictions_csv=str(runs["root"] / "pred_rerun.csv"),
    )
    manifest = pd.read_csv(runs["prepared_dir"] / "manifest.csv", keep_default_na=False)
    status = {Path(p).name: s for p, s in zip(manifest["input"], manifest["status"], strict=True)}
    assert status == {"a.nii.gz": "skipped", "b.nrrd": "skipped", "zz_corrupt.nii.gz": "error"}
    rows = _by_input(table)
    for name in GOOD:
        assert rows[name]["status"] == "ok" and rows[name]["prepare_status"] == "ok"
        assert "prepared earlier" in rows[name]["prepare_note"]
        assert np.isfinite(float(rows[name]["predicted_age"]))
    assert rows["zz_corrupt.nii.gz"]["status"] == "error"


def test_raw_folder_inputs_include_dicom_series(tmp_path: Path) -> None:
    from mri_slice_transfer.engine import resolve_inputs

    (tmp_path / "x.nii.gz").write_bytes(b"")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "0001.dcm").write_bytes(b"")
    (tmp_path / "notes").mkdir()
    plain = [Path(r["image"]).name for r in resolve_inputs(str(tmp_path))]
    raw = [Path(r["image"]).name for r in resolve_inputs(str(tmp_path), raw=True)]
    assert plain == ["x.nii.gz"] and raw == ["series", "x.nii.gz"]


def test_prepare_inputs_rejects_what_is_not_one_scan(tmp_path: Path) -> None:
    """A plain folder or a CSV listed as a scan gets an error dict (and is not expanded or prepared)."""
    from mri_slice_transfer.engine import prepare_inputs

    (tmp_path / "folder").mkdir()
    (tmp_path / "list.csv").write_text("image\nx.nii.gz\n")
    records = [{"image": str(tmp_path / n), "image_path": str(tmp_path / n)} for n in ("folder", "list.csv")]
    out = prepare_inputs(records, tmp_path / "prepared", progress=False)
    assert [o["prepare_status"] for o in out] == ["error", "error"]
    assert "folder without DICOM" in out[0]["prepare_error"] and "CSV file" in out[1]["prepare_error"]
    assert all(o["image"] == "" and o["input"] == r["image"] for o, r in zip(out, records, strict=True))
    with pytest.raises(ValueError, match="prepare_workers"):
        prepare_inputs(records, tmp_path / "prepared", workers=0)


def test_folder_inputs_include_nhdr(tmp_path: Path) -> None:
    """A ``.nhdr`` (NRRD, detached header) is a scan input, its ``.raw.gz`` data file is not."""
    from mri_slice_transfer.engine import resolve_inputs
    from mri_slice_transfer.engine.inputs import SCAN_SUFFIXES
    from mri_slice_transfer.prepare.io import IMAGE_SUFFIXES

    assert set(IMAGE_SUFFIXES) <= set(SCAN_SUFFIXES)  # every format prepare reads is found
    img = sitk.GetImageFromArray(np.ones((6, 7, 8), np.float32))
    sitk.WriteImage(img, str(tmp_path / "x.nhdr"), useCompression=True)
    assert (tmp_path / "x.raw.gz").is_file()
    for raw in (False, True):
        assert [Path(r["image"]).name for r in resolve_inputs(str(tmp_path), raw=raw)] == ["x.nhdr"]


def test_missing_checkpoint_fails_before_preparing(tmp_path: Path) -> None:
    """``prepare_inputs(..., checkpoint=...)`` names a missing model.pt before any scan is prepared."""
    from mri_slice_transfer.engine import prepare_inputs

    scan = tmp_path / "a.nii.gz"
    sitk.WriteImage(_make_scan(_template_1mm_sitk(), _pose(0), _orientation("RAS")), str(scan))
    records = [{"image": str(scan), "image_path": str(scan)}]
    ckpt = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"model checkpoint {ckpt} not found")):
        prepare_inputs(records, tmp_path / "prepared", progress=False, checkpoint=str(ckpt))
    assert not (tmp_path / "prepared").exists()  # nothing was prepared


def test_bundle_without_model_fails_before_preparing(tmp_path: Path) -> None:
    """``inference.json --prepare true`` on a bundle without ``models/model.pt`` stops before preparing."""
    bundle = copy_bundle(tmp_path, "adni_ad")  # no models/ folder
    raw = tmp_path / "raw"
    raw.mkdir()
    sitk.WriteImage(_make_scan(_template_1mm_sitk(), _pose(0), _orientation("RAS")), str(raw / "a.nii.gz"))
    with pytest.raises(Exception) as raised:  # MONAI wraps it: "Failed to evaluate ConfigExpression"
        _infer(
            bundle,
            input=str(raw),
            prepare="true",
            prepare_dir=str(tmp_path / "prepared"),
            predictions_csv=str(tmp_path / "pred.csv"),
        )
    cause = raised.value
    while not isinstance(cause, FileNotFoundError) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, FileNotFoundError) and str(bundle / "models" / "model.pt") in str(cause)
    assert not (tmp_path / "prepared").exists()


def test_two_sites_with_the_same_file_names_keep_their_own_outputs(tmp_path: Path) -> None:
    """``--prepare`` with the default output names: a second site never overwrites the first's outputs."""
    bundle = _bundle_with_model(tmp_path, "adni_ad")
    scan = _make_scan(_template_1mm_sitk(), _pose(0), _orientation("RAS"))
    sites = [tmp_path / "site1", tmp_path / "site2"]
    for site in sites:
        site.mkdir()
        sitk.WriteImage(scan, str(site / "sub-01_T1w.nii.gz"))  # same name at both sites
    for site in sites:
        run_workflow(
            str(bundle / "configs" / "inference.json"),
            "infer",
            network_def=TINY_NET,
            input=str(site),
            prepare="true",
        )
    csvs = sorted((bundle / "eval").glob("predictions-*.csv"))
    assert [p.name.split("-")[1] for p in csvs] == ["site1", "site2"]
    prepared = sorted(p for p in (bundle / "eval" / "prepared").iterdir())
    assert [p.name.split("-")[0] for p in prepared] == ["site1", "site2"]
    for site, csv, folder in zip(sites, csvs, prepared, strict=True):
        row = pd.read_csv(csv, keep_default_na=False).iloc[0]
        assert row["status"] == "ok" and Path(row["input"]).parent == site
        assert folder in Path(row["image"]).parents and Path(row["image"]).is_file()  # sub-01/anat/...
        manifest = pd.read_csv(folder / "manifest.csv")
        assert [Path(p).parent for p in manifest["input"]] == [site]


def test_inputs_that_find_no_scan_are_a_short_data_list_error(tmp_path: Path) -> None:
    """No scan in the folder, a CSV without ``image``, no input: one user error naming the source."""
    from mri_slice_transfer.engine import resolve_inputs
    from mri_slice_transfer.engine.short_errors import user_error
    from mri_slice_transfer.errors import DataListError

    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "list.csv").write_text("path\nx.nii.gz\n")
    cases = {str(tmp_path): "no scans found", str(tmp_path / "list.csv"): "'image' column", "": "--input"}
    for source, words in cases.items():
        with pytest.raises(DataListError) as info:
            resolve_inputs(source)
        assert words in str(info.value) and source in str(info.value)
        assert user_error(RuntimeError("config could not instantiate")) is None
        wrapped = RuntimeError("Failed to instantiate component")
        wrapped.__cause__ = info.value
        assert user_error(wrapped) is info.value  # printed by the bundles as one line, no traceback
