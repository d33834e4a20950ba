"""Fast tests of what the split command prints and writes (split.py): the default fractions and their
note, fraction parsing, the Markdown report and the written lists, for mutation testing of the module
(scripts/mutation.sh, docs/testing.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mri_slice_transfer.data.datalist import DataListError
from mri_slice_transfer.split import (
    FALLBACK_FRACTIONS,
    default_fractions,
    format_split_report,
    parse_fractions,
    split_datalist,
)
from mri_slice_transfer.vocabulary import TASKS


def test_default_fractions_note_gives_the_papers_counts_and_percentages() -> None:
    fr, note = default_fractions("adni_ad")
    assert fr == pytest.approx((2372 / 4161, 873 / 4161, 916 / 4161))
    assert note == f"the paper's {TASKS['adni_ad'].dataset} split, 2,372/873/916 scans (57.0/21.0/22.0 %)"
    assert default_fractions("other") == (
        FALLBACK_FRACTIONS,
        "70/15/15 (the paper gives no split for this task)",
    )


def test_fractions_are_normalised_ratios_and_bad_ones_are_named() -> None:
    assert parse_fractions("7; 1.5 ;1.5") == pytest.approx((0.7, 0.15, 0.15))
    assert parse_fractions((5, 3, 2)) == (0.5, 0.3, 0.2)
    with pytest.raises(ValueError, match=r"three numbers train,val,test \(e.g. 70,15,15\), got '1,x,1'"):
        parse_fractions("1,x,1")
    with pytest.raises(ValueError, match=r"three numbers .* got \[1, None, 1\]"):
        parse_fractions([1, None, 1])
    with pytest.raises(
        ValueError, match=r"every split needs a positive fraction \(train,val,test\), got 'inf,1,1'"
    ):
        parse_fractions("inf,1,1")
    with pytest.raises(ValueError, match=r"got '1,1,1,1'"):
        parse_fractions("1,1,1,1")


def _report() -> dict:
    return {
        "task": "adni_ad",
        "seed": 3,
        "stratify": "dx",
        "unit": "subjects",
        "target_fractions": {"train": 0.5704, "val": 0.2098, "test": 0.2198},
        "fractions_source": "the paper's ADNI split",
        "total": {"subjects": 5, "scans": 8},
        "splits": {
            "train": {
                "subjects": 3,
                "scans": 6,
                "share_of_scans": 0.75,
                "repeated_scan_subjects": 2,
                "dx_scans": {"AD": 2, "CN": 4},
                "ad_share_of_scans": 0.3333,
                "age": {"mean": 70.04, "std": 5.55, "min": 61.0, "median": 71.25, "max": 80.5},
                "subjects_per_stratum": {"AD": 1, "CN": 2},
            },
            "test": {
                "subjects": 2,
                "scans": 2,
                "share_of_scans": 0.25,
                "repeated_scan_subjects": 0,
                "subjects_per_stratum": {"CN": 2},
            },
        },
    }


def test_split_report_markdown_has_the_summary_line_the_table_and_the_strata() -> None:
    assert format_split_report(_report()) == (
        "Split of 8 scans of 5 subjects (task adni_ad, seed 3, stratified by dx, fractions of subjects: "
        "57.0/21.0/22.0 % = the paper's ADNI split)\n"
        "\n"
        "| split | subjects | scans | % of scans | subjects with repeat scans | dx (scans) | % AD "
        "| age mean ± sd | age median [min-max] |\n"
        "|---|---:|---:|---:|---:|---|---:|---|---|\n"
        "| train | 3 | 6 | 75.0 | 2 | AD 2, CN 4 | 33.3 | 70.0 ± 5.5 | 71.2 [61.0-80.5] |\n"
        "| test | 2 | 2 | 25.0 | 0 | - | - | - | - |\n"
        "\n"
        "Subjects per stratum:\n"
        "\n"
        "| stratum | train | test |\n"
        "|---|---:|---:|\n"
        "| AD | 1 | 0 |\n"
        "| CN | 2 | 2 |\n"
    )
    unstratified = _report()
    for e in unstratified["splits"].values():
        e["subjects_per_stratum"] = {"": e["subjects"]}
    assert "Subjects per stratum" not in format_split_report(unstratified)
    assert format_split_report(unstratified).endswith("| - | - | - | - |\n")


def _cohort(folder: Path, images: Path | None = None) -> Path:
    """40 subjects (1-2 scans), cells with spaces, a leading zero and NA; images under ``images``."""
    images = images or folder
    (images / "img").mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(40):
        for k in range(1 + s % 2):
            (images / "img" / f"s{s}_{k}.nii").touch()
            dx = "AD" if s % 3 == 0 else "CN"
            note = "NA" if s else ' "a, b"'  # a quoted cell after a space keeps its comma
            rows.append(f" s{s:02d} , ses-{k}, img/s{s}_{k}.nii ,{dx}, 0{60 + s}.50 ,{note},old")
    csv = folder / "all.csv"
    csv.write_text(
        "subject_id , session_id,image,dx,age,note,split\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )
    return csv


def test_split_lists_keep_the_input_cell_text_and_the_report_names_the_input(tmp_path: Path) -> None:
    """Lists: the input's columns and trimmed cell text (no number reformatting), no split column;
    the report files are the returned report; the input is never overwritten."""
    csv = _cohort(tmp_path / "c")
    res = split_datalist(csv, tmp_path / "out", "adni_ad", seed=0, unit="subjects")
    train = (tmp_path / "out" / "train.csv").read_text(encoding="utf-8").splitlines()
    assert train[0] == "subject_id,session_id,image,dx,age,note"
    lists = "".join(
        (tmp_path / "out" / f"{name}.csv").read_text(encoding="utf-8") for name in ("val", "test")
    )
    assert sum(line.endswith(',"a, b"') for line in train + lists.splitlines()) == 1
    assert all(",img/" in line and line.endswith(("0,NA", '"a, b"')) for line in train[1:])
    assert not any(line.startswith(" ") for line in train)
    assert any(line.split(",")[4].startswith("0") for line in train[1:])  # "060.50" kept as text
    written = {s: pd.read_csv(tmp_path / "out" / f"{s}.csv", dtype=str) for s in ("train", "val", "test")}
    assert sum(len(f) for f in written.values()) == 60 and res.unit == "subjects"
    report = json.loads((tmp_path / "out" / "split_report.json").read_text(encoding="utf-8"))
    assert report == res.report and report["input"] == str(csv)
    assert (tmp_path / "out" / "split_report.json").read_text(encoding="utf-8").startswith('{\n  "task"')
    assert (tmp_path / "out" / "split_report.md").read_text(encoding="utf-8") == format_split_report(report)
    with pytest.raises(
        ValueError, match=r"c/test.csv: the input would be overwritten by the split; choose another"
    ):
        split_datalist(tmp_path / "c" / "test.csv", tmp_path / "c", "adni_ad")
    with pytest.raises(
        FileExistsError, match=r"data lists already exist: .*train.csv, .*val.csv, .*test.csv"
    ):
        split_datalist(csv, tmp_path / "out", "adni_ad")
    again = split_datalist(csv, tmp_path / "out", "adni_ad", seed=1, overwrite=True, unit="subjects")
    assert again.seed == 1


def test_split_options_reach_the_split_and_images_are_found_under_the_dataset_dir(tmp_path: Path) -> None:
    """fractions, stratify and age bins are those asked for; relative images start at --dataset_dir and
    must exist (unless check_files is False); the output folder may be new and nested."""
    csv = _cohort(tmp_path / "lists", images=tmp_path / "data")
    res = split_datalist(
        csv, tmp_path / "a" / "out", "adni_ad", fractions="50,30,20", stratify="dx+age", age_bins=2,
        dataset_dir=tmp_path / "data",
    )  # fmt: skip
    assert res.fractions == (0.5, 0.3, 0.2) and res.stratify == "dx+age"
    assert len(set(res.strata.values())) == 4  # 2 diagnoses x 2 age bins
    with pytest.raises(DataListError, match=r"image 'img/s0_0.nii' not found"):
        split_datalist(csv, tmp_path / "b", "adni_ad")  # images looked for next to the CSV
    default = split_datalist(csv, tmp_path / "c", "adni_ad", check_files=False)
    assert default.stratify == "dx" and default.seed == 0  # the documented default seed
    no_age = tmp_path / "lists" / "no_age.csv"
    pd.read_csv(csv, dtype=str, skipinitialspace=True).drop(columns="age").to_csv(no_age, index=False)
    with pytest.raises(ValueError, match=r"no_age.csv: stratify 'dx\+age' needs an 'age' column"):
        split_datalist(no_age, tmp_path / "d", "adni_ad", stratify="dx+age", check_files=False)
