"""``mri-slice-transfer split``: subject-level, stratified, seeded splits and the leakage guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mri_slice_transfer.cli import main
from mri_slice_transfer.data.datalist import check_leakage, read_split_datalists
from mri_slice_transfer.errors import DataListError
from mri_slice_transfer.split import (
    PAPER_SPLIT_SCANS,
    default_fractions,
    parse_fractions,
    split_by_subject,
    split_datalist,
)


def all_scans(n_subjects: int = 120, seed: int = 0, task: str = "adni_ad") -> pd.DataFrame:
    """A cohort with 1-3 scans per subject, ~30 % AD, a few CN->AD converters, ages 55-90."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        n_scans = int(rng.choice([1, 1, 2, 3]))
        dx = "AD" if rng.random() < 0.3 else "CN"
        converter = task == "adni_ad" and dx == "CN" and n_scans > 1 and rng.random() < 0.2
        age = float(rng.uniform(55, 90))
        for k in range(n_scans):
            rows.append(
                {
                    "subject_id": f"sub-{s:03d}",
                    "session_id": f"ses-{k + 1}",
                    "image": f"images/sub-{s:03d}_ses-{k + 1}.nii.gz",
                    "dx": "AD" if dx == "AD" or (converter and k == n_scans - 1) else "CN",
                    "age": round(age + 1.5 * k, 2),
                }
            )
    frame = pd.DataFrame(rows)
    return frame.drop(columns="dx") if task == "brain_age" else frame


def write_cohort(folder: Path, frame: pd.DataFrame) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image in frame["image"]:
        (folder / image).touch()
    frame.to_csv(folder / "all_scans.csv", index=False)
    return folder / "all_scans.csv"


@pytest.mark.parametrize("task", ["adni_ad", "brain_age"])
def test_split_is_by_subject_stratified_and_leak_free_for_many_seeds(task: str) -> None:
    for data_seed in range(3):
        frame = all_scans(150, data_seed, task)
        max_w = int(frame["subject_id"].value_counts().max())
        for seed in range(12):
            res = split_by_subject(frame, task, seed=seed)
            subjects = {k: set(f["subject_id"]) for k, f in res.frames.items()}
            # no subject in two splits; every scan exactly once; every split used
            assert not subjects["train"] & subjects["val"]
            assert not subjects["train"] & subjects["test"]
            assert not subjects["val"] & subjects["test"]
            assert sorted(pd.concat(res.frames.values()).index) == list(frame.index)
            assert all(len(f) > 0 for f in res.frames.values())
            # scan counts follow the target fractions (the paper's by default) up to one subject
            n = len(frame)
            for f, part in zip(res.fractions, res.frames.values(), strict=True):
                assert abs(len(part) - f * n) <= max_w + 1, (seed, len(part), f * n)
            # stratification: every stratum is split in the same proportions (within two subjects)
            for stratum in set(res.strata.values()):
                members = {s for s, st in res.strata.items() if st == stratum}
                total = frame["subject_id"].isin(members).sum()
                for f, part in zip(res.fractions, res.frames.values(), strict=True):
                    got = part["subject_id"].isin(members).sum()
                    assert abs(got - f * total) <= 2 * max_w + 1, (task, seed, stratum, got, f * total)
            check_leakage(res.frames)  # the guard agrees


def test_split_is_reproducible_and_seed_dependent() -> None:
    frame = all_scans(80, 1)
    a = split_by_subject(frame, "adni_ad", seed=3).assignment
    assert a == split_by_subject(frame.sample(frac=1.0, random_state=0), "adni_ad", seed=3).assignment
    assert a != split_by_subject(frame, "adni_ad", seed=4).assignment


def test_converters_and_strata() -> None:
    frame = all_scans(150, 0)
    res = split_by_subject(frame, "adni_ad", seed=0)
    assert set(res.strata.values()) == {"AD", "CN", "AD+CN"}
    by_age = split_by_subject(frame, "adni_ad", seed=0, stratify="dx+age", age_bins=3)
    assert len(set(by_age.strata.values())) == 9  # 3 dx groups x 3 age bins
    none = split_by_subject(frame, "adni_ad", seed=0, stratify="none", fractions="1,1,1", unit="subjects")
    assert [r["subjects"] for r in none.report["splits"].values()] == [50, 50, 50]


def test_default_fractions_are_the_papers() -> None:
    fr, note = default_fractions("adni_ad")
    assert np.allclose(fr, np.array(PAPER_SPLIT_SCANS["adni_ad"]) / 4161) and "2,372/873/916" in note
    fr, note = default_fractions("brain_age")
    assert np.allclose(fr, np.array([7312, 2194, 940]) / 10446) and "UK Biobank" in note
    assert parse_fractions("70,15,15") == pytest.approx((0.7, 0.15, 0.15))
    assert parse_fractions([0.6, 0.2, 0.2]) == pytest.approx((0.6, 0.2, 0.2))
    for bad in ("70,30", "70,0,30", "a,b,c", "-1,1,1"):
        with pytest.raises(ValueError, match="fraction"):
            parse_fractions(bad)


def test_too_few_subjects_is_an_error() -> None:
    frame = all_scans(2, 0)
    with pytest.raises(ValueError, match="at least 3"):
        split_by_subject(frame, "adni_ad")
    # with three subjects or more, every split gets at least one, however small its fraction
    tiny = split_by_subject(all_scans(5, 0), "adni_ad", fractions="98,1,1", stratify="none")
    assert [r["subjects"] for r in tiny.report["splits"].values()] == [3, 1, 1]


def test_leakage_guard_names_the_subjects(tmp_path: Path) -> None:
    frames = {
        "train": pd.DataFrame({"subject_id": ["a", "b", "c"]}),
        "val": pd.DataFrame({"subject_id": ["d", "b"]}),
        "test": pd.DataFrame({"subject_id": ["c", "e"]}),
    }
    with pytest.raises(DataListError) as info:
        check_leakage(frames, {"train": "lists/train.csv"})
    problems = info.value.problems
    assert len(problems) == 2
    assert (
        "'b'" in problems[0]
        and "lists/train.csv row 2 (line 3)" in problems[0]
        and "val row 2" in problems[0]
    )
    assert "'c'" in problems[1] and "leakage" in problems[1] and "test row 1 (line 2)" in problems[1]
    check_leakage({"train": frames["train"], "val": pd.DataFrame({"subject_id": ["x"]})})

    # the bundles' reader runs the same guard on files
    for split, subs in (("train", "a,b"), ("val", "c"), ("test", "b")):
        rows = "\n".join(f"{s},{s}_{split}.nii.gz,CN" for s in subs.split(","))
        (tmp_path / f"{split}.csv").write_text(f"subject_id,image,dx\n{rows}\n")
    with pytest.raises(DataListError, match=r"subject 'b' appears in more than one split \(leakage\)"):
        read_split_datalists(tmp_path, "adni_ad", check_files=False)


def test_split_refuses_subject_ids_that_differ_only_in_case() -> None:
    frame = all_scans(30, 0)
    frame.loc[frame["subject_id"] == "sub-003", "subject_id"] = "SUB-003"
    frame.loc[frame.index[frame["subject_id"] == "SUB-003"][0], "subject_id"] = "sub-003"
    with pytest.raises(ValueError, match=r"differ only in case: 'SUB-003' / 'sub-003'"):
        split_by_subject(frame, "adni_ad", source="all.csv")


def test_split_command_writes_checked_lists_and_a_report(tmp_path: Path, capsys) -> None:
    frame = all_scans(60, 2)
    frame["split"] = "old"  # a stale split column is dropped
    csv = write_cohort(tmp_path / "cohort", frame)
    out = tmp_path / "lists"
    assert main(["split", str(csv), "--out", str(out), "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "| train |" in text and "% AD" in text and "2,372/873/916" in text and "--dataset_dir" in text
    lists = read_split_datalists(out, "adni_ad", dataset_dir=csv.parent)
    assert sum(len(f) for f in lists.values()) == len(frame)
    written = pd.read_csv(out / "train.csv", dtype=str)
    assert "split" not in written.columns and written["image"].str.startswith("images/").all()
    report = json.loads((out / "split_report.json").read_text(encoding="utf-8"))
    assert report["seed"] == 1 and report["stratify"] == "dx" and report["total"]["scans"] == len(frame)
    assert {"subjects", "scans", "dx_scans", "age", "ad_share_of_scans"} <= set(report["splits"]["test"])
    assert (out / "split_report.md").read_text(encoding="utf-8").startswith("Split of")

    # existing lists are not replaced without --force; the same seed gives the same files
    before = (out / "test.csv").read_text(encoding="utf-8")
    assert main(["split", str(csv), "--out", str(out), "--seed", "1"]) == 1
    assert "--force" in capsys.readouterr().out
    assert main(["split", str(csv), "--out", str(out), "--seed", "1", "--force"]) == 0
    assert (out / "test.csv").read_text(encoding="utf-8") == before

    # every problem of the input is reported, naming the file
    (csv.parent / "images" / "sub-000_ses-1.nii.gz").unlink()
    assert main(["split", str(csv), "--out", str(tmp_path / "x")]) == 1
    assert "all_scans.csv row 1 (line 2)" in capsys.readouterr().out


def test_split_datalist_brain_age_by_age_bins(tmp_path: Path) -> None:
    frame = all_scans(90, 3, task="brain_age")
    csv = write_cohort(tmp_path, frame)
    res = split_datalist(csv, tmp_path / "out", "brain_age", seed=0, fractions="70,15,15", check_files=True)
    ages = {k: v["age"]["mean"] for k, v in res.report["splits"].items()}
    assert max(ages.values()) - min(ages.values()) < 4.0, ages  # age-stratified: similar means
    assert res.stratify == "age" and len(set(res.strata.values())) == 4
