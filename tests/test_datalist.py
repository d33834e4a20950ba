"""The data list reader: valid lists load; every problem is reported at once, naming file and row."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from mri_slice_transfer.data.datalist import TASKS, read_datalist, read_split_datalists
from mri_slice_transfer.errors import DataListError


def _touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def _write(path: Path, text: str) -> Path:
    path.write_text(text.lstrip())
    return path


def test_tasks_describe_label_columns():
    assert TASKS["adni_ad"].label_column == "dx"
    assert TASKS["adni_ad"].classes == {"CN": 0, "AD": 1}
    assert TASKS["brain_age"].label_column == "age"
    assert TASKS["brain_age"].kind == "regression"


def test_valid_list_resolves_paths_and_labels(tmp_path):
    _touch(tmp_path, "images/a.nii.gz", "images/b.nii.gz")
    csv = _write(
        tmp_path / "train.csv",
        """
subject_id,session_id,image,dx,age,sex,site
s1,ses-1,images/a.nii.gz,AD,71.5,F,x
s2,ses-1,images/b.nii.gz,CN,66,M,x
""",
    )
    frame = read_datalist(csv, "adni_ad")
    assert frame["label"].tolist() == [1.0, 0.0]
    assert frame["image"].tolist() == [
        str((tmp_path / "images" / n).resolve()) for n in ("a.nii.gz", "b.nii.gz")
    ]
    assert frame["age"].dtype.kind == "f"

    age = read_datalist(csv, "brain_age")
    assert age["label"].tolist() == [71.5, 66.0]


def test_dataset_dir_and_absolute_paths(tmp_path):
    data = tmp_path / "data"
    _touch(data, "x.nii.gz")
    _touch(tmp_path, "abs.nii.gz")
    lists = tmp_path / "lists"
    lists.mkdir()
    csv = _write(
        lists / "test.csv", f"subject_id,image,age\ns1,x.nii.gz,50\ns2,{tmp_path / 'abs.nii.gz'},60\n"
    )
    with pytest.raises(DataListError):  # relative to the CSV's folder by default: not found
        read_datalist(csv, "brain_age")
    frame = read_datalist(csv, "brain_age", dataset_dir=data)
    assert Path(frame["image"][0]) == (data / "x.nii.gz").resolve()
    assert read_datalist(csv, "brain_age", check_files=False)["label"].tolist() == [50.0, 60.0]


def test_every_problem_in_one_file_is_reported(tmp_path):
    _touch(tmp_path, "a.nii.gz", "b.nii.gz")
    csv = _write(
        tmp_path / "train.csv",
        """
subject_id,image,dx,sex
s1,a.nii.gz,MCI,F
s2,missing.nii.gz,CN,M
s3,a.nii.gz,AD,X
,b.nii.gz,CN,F
s5,,CN,F
""",
    )
    with pytest.raises(DataListError) as info:
        read_datalist(csv, "adni_ad")
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 6, text
    assert all(str(csv) in p for p in problems)
    assert any("row 1 (line 2)" in p and "'MCI'" in p for p in problems)
    assert any("row 2 (line 3)" in p and "not found" in p for p in problems)
    assert any("rows 1, 3" in p and "more than once" in p for p in problems)
    assert any("row 3 (line 4)" in p and "sex" in p for p in problems)
    assert any("row 4 (line 5)" in p and "subject_id" in p for p in problems)
    assert any("row 5 (line 6)" in p and "empty image" in p for p in problems)
    assert pickle.loads(pickle.dumps(info.value)).problems == problems


def test_brain_age_values_are_checked(tmp_path):
    csv = _write(
        tmp_path / "val.csv",
        """
subject_id,image,age
s1,a.nii.gz,sixty
s2,b.nii.gz,nan
s3,c.nii.gz,130
s4,d.nii.gz,-1
s5,e.nii.gz,64.2
""",
    )
    with pytest.raises(DataListError) as info:
        read_datalist(csv, "brain_age", check_files=False)
    problems = info.value.problems
    assert len(problems) == 4
    for row in (1, 2, 3, 4):
        assert any(f"row {row} (line {row + 1})" in p for p in problems)


def test_split_lists_report_all_problems_together(tmp_path):
    _touch(tmp_path, "a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz")
    _write(tmp_path / "train.csv", "subject_id,image,dx\ns1,a.nii.gz,AD\ns2,b.nii.gz,XX\n")
    _write(tmp_path / "val.csv", "subject_id,image\ns3,c.nii.gz\n")  # no dx column
    _write(tmp_path / "test.csv", "subject_id,image,dx\ns1,d.nii.gz,AD\ns4,gone.nii.gz,CN\n")  # s1 leaks
    with pytest.raises(DataListError) as info:
        read_split_datalists(tmp_path, "adni_ad")
    problems = info.value.problems
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert any("train.csv row 2 (line 3)" in p and "'XX'" in p for p in problems)
    assert any("val.csv" in p and "missing column 'dx'" in p for p in problems)
    assert any("test.csv row 2 (line 3)" in p and "not found" in p for p in problems)
    leak = [p for p in problems if "leakage" in p]
    assert (
        len(leak) == 1 and "'s1'" in leak[0] and "train.csv row 1" in leak[0] and "test.csv row 1" in leak[0]
    )


def test_missing_split_file_is_a_problem(tmp_path):
    _touch(tmp_path, "a.nii.gz", "b.nii.gz")
    _write(tmp_path / "train.csv", "subject_id,image,age\ns1,a.nii.gz,70\n")
    _write(tmp_path / "val.csv", "subject_id,image,age\ns2,b.nii.gz,71\n")
    with pytest.raises(DataListError) as info:
        read_split_datalists(tmp_path, "brain_age")
    assert len(info.value.problems) == 1
    assert "test.csv" in info.value.problems[0] and "not found" in info.value.problems[0]
    frames = read_split_datalists(tmp_path, "brain_age", splits=("train", "val"))
    assert set(frames) == {"train", "val"}


def _lists(root: Path, **rows: str) -> None:
    """Write ``<split>.csv`` (brain_age) with one ``subject,image`` pair per comma-separated item."""
    for split, items in rows.items():
        lines = [f"{item.split(':')[0]},{item.split(':')[1]},70" for item in items.split()]
        _write(root / f"{split}.csv", "subject_id,image,age\n" + "\n".join(lines) + "\n")


def _leaks(root: Path) -> list[str]:
    with pytest.raises(DataListError) as info:
        read_split_datalists(root, "brain_age")
    return [p for p in info.value.problems if "leakage" in p]


def test_one_image_file_in_two_splits_is_leakage_however_it_is_written(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("x", "y", "z"):
        (tmp_path / "images" / f"{name}.nii.gz").write_bytes(name.encode() * 10)
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "images" / "x.nii.gz")
    _lists(
        tmp_path,
        train="s1:./images/x.nii.gz s2:images/y.nii.gz",
        val="s3:images/z.nii.gz s4:images/x.nii.gz",
        test="s5:link.nii.gz",
    )
    leaks = _leaks(tmp_path)
    assert len(leaks) == 1, leaks
    assert str((tmp_path / "images" / "x.nii.gz").resolve()) in leaks[0]
    for where in ("train.csv row 1 (line 2)", "val.csv row 2 (line 3)", "test.csv row 1 (line 2)"):
        assert where in leaks[0], leaks[0]


def test_identical_content_under_two_names_in_two_splits_is_leakage(tmp_path):
    head, tail = b"h" * 50_000, b"t" * 50_000  # the quick digest samples 16 blocks, not this middle
    files = {
        "a.nii.gz": head + b"scan a" + tail,
        "copy_of_a.nii.gz": head + b"scan a" + tail,
        "b.nii.gz": head + b"scan b" + tail,  # same size and quick digest as a: only the full hash tells
        "c.nii.gz": b"scan c",
        "c_again.nii.gz": b"scan c",  # identical to c, but in the same split: not leakage
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    _lists(
        tmp_path,
        train="s1:a.nii.gz s2:c.nii.gz s3:c_again.nii.gz",
        val="s4:b.nii.gz",
        test="s5:copy_of_a.nii.gz",
    )
    leaks = _leaks(tmp_path)
    assert len(leaks) == 1, leaks
    assert "identical image content" in leaks[0] and "sha256" in leaks[0]
    assert "train.csv row 1 (line 2)" in leaks[0] and "test.csv row 1 (line 2)" in leaks[0]
    assert "copy_of_a.nii.gz" in leaks[0] and "b.nii.gz" not in leaks[0].replace("copy_of_a", "")


def test_subject_ids_are_compared_ignoring_case(tmp_path):
    _touch(tmp_path, "a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz")
    _lists(tmp_path, train="sub-0003:a.nii.gz sub-0001:b.nii.gz", val="SUB-0003:c.nii.gz", test="s4:d.nii.gz")
    leaks = _leaks(tmp_path)
    assert len(leaks) == 1, leaks
    assert "'sub-0003'" in leaks[0] and "'SUB-0003'" in leaks[0] and "ignoring case" in leaks[0]
    assert "train.csv row 1 (line 2)" in leaks[0] and "val.csv row 1 (line 2)" in leaks[0]


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        read_datalist(tmp_path / "x.csv", "mci")
