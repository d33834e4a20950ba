"""Fast tests of data-list reading (data/datalist.py) that mutation testing found missing
(scripts/mutation.sh, docs/testing.md): a missing or empty data list is a problem naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mri_slice_transfer.data.datalist import read_datalist, read_split_datalists
from mri_slice_transfer.errors import DataListError


def test_a_missing_or_empty_data_list_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataListError) as info:
        read_datalist(tmp_path / "all.csv", "brain_age")
    assert info.value.problems == [f"{tmp_path / 'all.csv'}: file not found ({tmp_path / 'all.csv'})"]
    (tmp_path / "all.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataListError) as info:
        read_datalist(tmp_path / "all.csv", "brain_age")
    assert info.value.problems == [
        f"{tmp_path / 'all.csv'}: the file is empty (expected a header line and one row per scan)"
    ]
    (tmp_path / "val.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataListError) as info:
        read_split_datalists(tmp_path, "brain_age", splits=("val",))
    assert info.value.problems == [
        f"{tmp_path / 'val.csv'}: the file is empty (expected a header line and one row per scan)"
    ]
