"""``mri-slice-transfer datalist``: data lists from BIDS datasets, prepare manifests and plain folders.

The acceptance test goes from a small BIDS tree (two sessions for some subjects, ADNI-style labels in
participants.tsv, one MCI and one unlabelled subject) through ``datalist`` -> ``split`` -> a 1-epoch
training of the AD bundle -> inference on the BIDS folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_bundles import FAST, TINY_NET, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.cli import main
from mri_slice_transfer.data.bids import derivative_name, join_key, scan_entities
from mri_slice_transfer.data.sources import scans_from_pattern
from mri_slice_transfer.engine.inputs import resolve_inputs

#: participant_id -> (DX as ADNIMERGE writes it, age, sessions); "" is BIDS's n/a.
PARTICIPANTS = {
    "sub-01": ("CN", "71", ("bl", "m12")),
    "sub-02": ("Dementia", "75", ("bl", "m12")),
    "sub-03": ("CN", "68", ("bl", "m12")),
    "sub-04": ("Dementia", "80", ("bl", "m12")),
    "sub-05": ("CN", "66", ("bl",)),
    "sub-06": ("Dementia", "77", ("bl",)),
    "sub-07": ("CN", "73", ("bl",)),
    "sub-08": ("Dementia", "79", ("bl",)),
    "sub-09": ("CN", "70", ("bl",)),
    "sub-10": ("Dementia", "82", ("bl",)),
    "sub-11": ("MCI", "74", ("bl",)),
    "sub-12": ("", "72", ("bl",)),
}


def write_bids(root: Path, pool: Path) -> Path:
    """A BIDS tree of :data:`PARTICIPANTS` whose CN / AD scans are ``write_tiny_dataset``'s CN / AD images."""
    images = pd.concat([pd.read_csv(pool / f"{s}.csv") for s in ("train", "val", "test")])
    by_dx = {dx: list(group["image"]) for dx, group in images.groupby("dx")}
    lines = ["participant_id\tDX\tage\tsex"]
    for sub, (dx, age, sessions) in PARTICIPANTS.items():
        lines.append(f"{sub}\t{dx or 'n/a'}\t{age}\t{'F' if int(sub[-2:]) % 2 else 'M'}")
        for ses in sessions:
            anat = root / sub / f"ses-{ses}" / "anat"
            anat.mkdir(parents=True)
            src = by_dx["AD" if dx == "Dementia" else "CN"].pop()
            shutil.copy(pool / src, anat / f"{sub}_ses-{ses}_T1w.nii")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.8.0"}')
    return root


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool = write_tiny_dataset(tmp_path_factory.mktemp("pool"), n_per_split=(10, 4, 4))
    return write_bids(tmp_path_factory.mktemp("bids") / "ds", pool)


def test_bids_to_datalist_split_training_and_inference(bids: Path, tmp_path: Path, capsys) -> None:
    all_csv = tmp_path / "all.csv"
    args = ["datalist", "--bids", str(bids), "--out", str(all_csv), "--label-column", "DX"]
    assert main([*args, "--map", "Dementia=AD,CN=CN"]) == 0
    report = capsys.readouterr().out
    rows = pd.read_csv(all_csv, dtype=str, keep_default_na=False)
    assert len(rows) == 14 and set(rows["dx"]) == {"AD", "CN"}  # 10 subjects, 4 with two sessions
    assert set(rows.loc[rows["subject_id"] == "sub-02", "session_id"]) == {"ses-bl", "ses-m12"}
    assert (rows.loc[rows["subject_id"] == "sub-02", "dx"] == "AD").all()
    assert list(rows.columns[:4]) == ["subject_id", "session_id", "image", "dx"]
    assert set(rows["sex"]) == {"M", "F"} and rows["age"].astype(float).between(60, 90).all()
    dropped = pd.read_csv(tmp_path / "all_dropped.csv", keep_default_na=False)
    assert sorted(dropped["subject_id"]) == ["sub-11", "sub-12"]  # reported together, in one file
    assert "'MCI' is not one of CN/AD" in report and "no DX value" in report and "dropped 2 scan(s)" in report

    lists = tmp_path / "lists"
    assert (
        main(["split", str(all_csv), "--out", str(lists), "--fractions", "50,25,25", "--unit", "subjects"])
        == 0
    )
    splits = {s: pd.read_csv(lists / f"{s}.csv", dtype=str) for s in ("train", "val", "test")}
    owners = [set(f["subject_id"]) for f in splits.values()]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert sum(len(f) for f in splits.values()) == 14

    bundle = copy_bundle(tmp_path)
    store = tmp_path / "scan_cache"
    wf = run_workflow(
        str(bundle / "configs" / "train.json"),
        datalist_dir=str(lists),
        epochs=1,
        cache_dir=str(store),
        **FAST,
    )
    assert (bundle / "models" / "model.pt").is_file()
    assert wf.parser.get_parsed_content("data_cache") == "disk"  # real data: the on-disk cache
    n_fit = len(splits["train"]) + len(splits["val"])
    assert (
        len(list(store.glob("*/*.npz")))
        == n_fit
        == len((next(store.glob("*/builds.log"))).read_text().splitlines())
    )
    pred_csv = tmp_path / "pred.csv"
    run_workflow(
        str(bundle / "configs" / "inference.json"),
        "infer",
        input=str(bids),
        predictions_csv=str(pred_csv),
        network_def=TINY_NET,
    )
    pred = pd.read_csv(pred_csv, dtype=str, keep_default_na=False)
    assert len(pred) == 16 and (pred["status"] == "ok").all()  # every T1w, labelled or not
    assert set(pred["subject_id"]) == set(PARTICIPANTS)
    assert set(pred.loc[pred["subject_id"] == "sub-01", "session_id"]) == {"ses-bl", "ses-m12"}


def test_sessions_tsv_values_win_and_clinical_table_joins_adni_ids(bids: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(bids, ds)
    (ds / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-bl\t71.0\nses-m12\t72.0\n")
    assert (
        main(["datalist", "--bids", str(ds), "--out", str(tmp_path / "age.csv"), "--task", "brain_age"]) == 0
    )
    rows = pd.read_csv(tmp_path / "age.csv", dtype=str)
    assert rows.loc[rows["subject_id"] == "sub-01", "age"].tolist() == ["71.0", "72.0"]
    assert len(rows) == 16  # every scan has an age

    # an ADNIMERGE-like table: one row per visit, DX differs between visits of sub-02
    merge = tmp_path / "ADNIMERGE.csv"
    merge.write_text("PTID,VISCODE,DX\n01,bl,CN\n01,m12,CN\n02,bl,MCI\n02,m12,Dementia\n")
    out = tmp_path / "joined.csv"
    base = [
        "datalist",
        "--bids",
        str(ds),
        "--clinical",
        str(merge),
        "--label-column",
        "DX",
        "--map",
        "Dementia=AD",
    ]
    assert main([*base, "--out", str(out), "--subject-column", "PTID"]) == 0
    rows = pd.read_csv(out, dtype=str)
    assert rows["subject_id"].tolist() == ["sub-01", "sub-01"]  # sub-02's visits disagree: ambiguous
    dropped = pd.read_csv(tmp_path / "joined_dropped.csv", keep_default_na=False)
    assert set(dropped.loc[dropped["subject_id"] == "sub-02", "problem"]) == {"ambiguous clinical rows"}
    assert set(dropped.loc[dropped["subject_id"] == "sub-05", "problem"]) == {"no clinical row"}
    assert main([*base, "--out", str(out), "--force", "--session-column", "VISCODE"]) == 0
    rows = pd.read_csv(out, dtype=str)
    assert rows[["subject_id", "session_id", "dx"]].values.tolist() == [
        ["sub-01", "ses-bl", "CN"],
        ["sub-01", "ses-m12", "CN"],
        ["sub-02", "ses-m12", "AD"],
    ]


def test_manifest_and_pattern_sources(tmp_path: Path, capsys) -> None:
    # UK Biobank layout: every scan is T1/T1_brain_to_MNI.nii.gz in <eid>_20252_2_0/
    for eid in ("1000001", "1000002"):
        (tmp_path / "ukb" / f"{eid}_20252_2_0" / "T1").mkdir(parents=True)
        (tmp_path / "ukb" / f"{eid}_20252_2_0" / "T1" / "T1_brain_to_MNI.nii.gz").write_bytes(b"x")
    pattern = "{subject}_20252_{session}/T1/T1_brain_to_MNI.nii.gz"
    scans = scans_from_pattern(tmp_path / "ukb", pattern)
    assert scans[["subject_id", "session_id"]].values.tolist() == [["1000001", "2_0"], ["1000002", "2_0"]]
    ages = tmp_path / "ages.csv"
    ages.write_text("eid,age_at_scan\n1000001,63.5\n1000002,171\n")
    out = tmp_path / "ukb.csv"
    args = ["--folder", str(tmp_path / "ukb"), "--pattern", pattern, "--clinical", str(ages)]
    assert (
        main(["datalist", *args, "--task", "brain_age", "--age-column", "age_at_scan", "--out", str(out)])
        == 0
    )
    assert pd.read_csv(out)["age"].tolist() == [63.5]
    assert "outside the plausible 0-120" in capsys.readouterr().out

    manifest = tmp_path / "prepared" / "manifest.csv"
    manifest.parent.mkdir()
    prepared = tmp_path / "prepared" / "a.nii.gz"
    prepared.write_bytes(b"x")
    pd.DataFrame(
        {
            "input": ["/raw/sub-01/anat/sub-01_T1w.nii.gz", "/raw/sub-02/anat/sub-02_T1w.nii.gz"],
            "output": [str(prepared), ""],
            "status": ["ok", "error"],
            "error": ["", "/raw/sub-02/anat/sub-02_T1w.nii.gz: is not a NIfTI file"],
        }
    ).to_csv(manifest, index=False)
    (tmp_path / "dx.tsv").write_text("participant_id\tdx\nsub-01\tAD\nsub-02\tCN\n")
    out = tmp_path / "from_manifest.csv"
    assert (
        main(
            [
                "datalist",
                "--manifest",
                str(manifest),
                "--clinical",
                str(tmp_path / "dx.tsv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert pd.read_csv(out)[["subject_id", "dx"]].values.tolist() == [["sub-01", "AD"]]
    dropped = pd.read_csv(tmp_path / "from_manifest_dropped.csv")
    assert dropped["problem"].tolist() == ["preparation failed"] and "not a NIfTI" in dropped["reason"][0]


def test_nothing_labelled_and_bad_options_are_one_line_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "t1.nii.gz").write_bytes(b"x")
    assert main(["datalist", "--folder", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 1
    assert "--folder needs --pattern" in capsys.readouterr().out
    args = [
        "datalist",
        "--folder",
        str(tmp_path),
        "--pattern",
        "{subject}/t1.nii.gz",
        "--out",
        str(tmp_path / "x.csv"),
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "no 'dx' column in the scans' tables (found subject_id, session_id, image)" in out
    (tmp_path / "dx.csv").write_text("subject_id,dx\ns1,MCI\n")
    assert main([*args, "--clinical", str(tmp_path / "dx.csv")]) == 1
    out = capsys.readouterr().out
    assert "no scan could be labelled" in out and "dx 'MCI' is not one of CN/AD" in out
    assert not (tmp_path / "x.csv").exists()
    assert main([*args, "--map", "AD"]) == 1
    assert "--map must be value=label pairs separated by commas, not 'AD'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("path", "subject", "session", "name"),
    [
        (
            "/d/sub-01/ses-bl/anat/sub-01_ses-bl_run-2_T1w.nii.gz",
            "sub-01",
            "ses-bl",
            "sub-01/ses-bl/anat/sub-01_ses-bl_run-2_space-MNI152NLin2009aSym_res-2_T1w",
        ),
        (
            "/ukb/1234567_20252_2_0/T1/T1.nii.gz",
            "sub-1234567",
            "ses-2",
            "sub-1234567/ses-2/anat/sub-1234567_ses-2_space-MNI152NLin2009aSym_res-2_T1w",
        ),
        (
            "/ukb/1234567_20252_2_0/T1/T1_brain_to_MNI.nii.gz",
            "sub-1234567",
            "ses-2",
            "sub-1234567/ses-2/anat/sub-1234567_ses-2_desc-brainToMNI_space-MNI152NLin2009aSym_res-2_T1w",
        ),
        (
            "/ADNI/002_S_0295/MPRAGE/2006-04-18_08_20_30.0/I13722",
            "sub-ADNI002S0295",
            "ses-20060418",
            "sub-ADNI002S0295/ses-20060418/anat/sub-ADNI002S0295_ses-20060418_space-MNI152NLin2009aSym_res-2_T1w",
        ),
        ("/scans/patient7.nii.gz", "", "", None),
    ],
)
def test_scan_entities(path: str, subject: str, session: str, name: str | None) -> None:
    e = scan_entities(path)
    assert (e.subject_id, e.session_id, derivative_name(e)) == (subject, session, name)


def test_join_key_matches_adni_and_bids_spellings() -> None:
    assert join_key("002_S_0295") == join_key("sub-ADNI002S0295") == join_key("adni002s0295")
    assert join_key("ses-20060418") == join_key("2006-04-18")
    assert join_key("sub-01") != join_key("sub-010")


def test_inference_inputs_fill_subject_and_session_from_paths(tmp_path: Path) -> None:
    anat = tmp_path / "ds" / "sub-03" / "ses-2" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-03_ses-2_T1w.nii.gz").write_bytes(b"x")
    (anat / "sub-03_ses-2_FLAIR.nii.gz").write_bytes(b"x")  # a BIDS dataset contributes only T1w
    (tmp_path / "ds" / "derivatives").mkdir()
    (tmp_path / "ds" / "derivatives" / "other.nii.gz").write_bytes(b"x")
    items = resolve_inputs(str(tmp_path / "ds"))
    assert [(Path(i["image"]).name, i["subject_id"], i["session_id"]) for i in items] == [
        ("sub-03_ses-2_T1w.nii.gz", "sub-03", "ses-2")
    ]
    ukb = tmp_path / "ukb" / "1000001_20252_2_0" / "T1"
    ukb.mkdir(parents=True)
    (ukb / "T1_brain_to_MNI.nii.gz").write_bytes(b"x")
    items = resolve_inputs(str(tmp_path / "ukb"))
    assert [(i["subject_id"], i["session_id"]) for i in items] == [("sub-1000001", "ses-2")]


def test_adni_scans_join_adnimerge_by_nearest_exam_date(tmp_path: Path, capsys) -> None:
    """prepare names ADNI downloads sub-ADNI<PTID>/ses-<date>; ADNIMERGE rows match by PTID + EXAMDATE."""
    raw = "/ADNI/{ptid}/MPRAGE/{date}_08_20_30.0/I{n}"
    visits = [("002_S_0295", "2006-04-18"), ("002_S_0295", "2007-05-02"), ("011_S_0003", "2005-09-12")]
    outputs = [tmp_path / f"scan{n}.nii.gz" for n in range(len(visits))]
    for p in outputs:
        p.write_bytes(b"x")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "input": [raw.format(ptid=p, date=d, n=n) for n, (p, d) in enumerate(visits)],
            "output": [str(p) for p in outputs],
            "status": ["ok", "ok", "flagged"],
        }
    ).to_csv(manifest, index=False)
    merge = tmp_path / "ADNIMERGE.csv"
    merge.write_text(
        "RID,PTID,VISCODE,EXAMDATE,DX\n295,002_S_0295,bl,2006-04-10,CN\n295,002_S_0295,m12,2007-04-20,Dementia\n"
        "3,011_S_0003,bl,2005-05-01,Dementia\n"
    )
    out = tmp_path / "adni.csv"
    args = ["datalist", "--manifest", str(manifest), "--clinical", str(merge), "--subject-column", "PTID"]
    args += [
        "--session-column",
        "EXAMDATE",
        "--max-days",
        "60",
        "--label-column",
        "DX",
        "--map",
        "Dementia=AD",
    ]
    assert main([*args, "--out", str(out)]) == 0
    rows = pd.read_csv(out, dtype=str)
    assert rows[["subject_id", "session_id", "dx"]].values.tolist() == [
        ["sub-ADNI002S0295", "ses-20060418", "CN"],  # 8 days after the bl exam
        ["sub-ADNI002S0295", "ses-20070502", "AD"],  # 12 days after m12
    ]
    dropped = pd.read_csv(tmp_path / "adni_dropped.csv")
    assert dropped["subject_id"].tolist() == ["sub-ADNI011S0003"]  # 134 days from its only exam
    assert "within 60 days" in dropped["reason"][0]


def test_mni_1mm_images_go_straight_to_the_template_grid(tmp_path: Path) -> None:
    """UK Biobank's T1_brain_to_MNI (FSL MNI152 1 mm grid, 182x218x182) needs no prepare: its voxel centres
    include the 2 mm grid's, so the bundles' transforms filter and pick (the strided path), no registration.
    """
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from mri_slice_transfer.template import load_template, load_template_1mm
    from mri_slice_transfer.transforms import get_inference_transforms
    from mri_slice_transfer.transforms.io import LoadScand
    from mri_slice_transfer.transforms.spatial import resample_to_template

    src = load_template_1mm()  # nilearn's ICBM152 2009a at 1 mm
    fsl_1mm = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
    grid = np.indices((182, 218, 182), dtype=np.float32).reshape(3, -1)
    vox = np.linalg.inv(src.affine) @ fsl_1mm
    data = ndimage.map_coordinates(src.t1, vox[:3, :3] @ grid + vox[:3, 3:4], order=1)
    path = tmp_path / "1000001_20252_2_0" / "T1" / "T1_brain_to_MNI.nii.gz"
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(data.reshape(182, 218, 182).astype(np.float32), fsl_1mm), path)

    loaded = LoadScand(keys="image")({"image": str(path)})["image"]
    assert resample_to_template(loaded).meta["resample_path"] == "strided"
    x = get_inference_transforms()({"image": str(path)})["image"][0].numpy()
    t = load_template()
    assert x.shape == t.t1.shape and np.corrcoef(x[t.mask], t.t1[t.mask])[0, 1] > 0.995
