"""Exceptions that name the file and the problem, so a researcher knows what to fix."""

from __future__ import annotations

from os import PathLike

__all__ = ["ScanError", "DataListError"]


class ScanError(ValueError):
    """A scan that cannot be used: it does not load, is not 3D, is empty, or holds NaN/Inf.

    Args:
        path: the file (or folder, for DICOM series) that has the problem.
        problem: what is wrong and, where possible, what to change.
    """

    def __init__(self, path: str | PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        where = self.path if self.path is not None else "<in-memory image>"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep picklable across DataLoader / multiprocessing workers
        return (type(self), (self.path, self.problem))


class DataListError(ValueError):
    """One or more problems in data list(s); ``problems`` lists every one, each naming file and row.

    Args:
        problems: human-readable lines, e.g. ``"train.csv row 12: image 'sub-1.nii.gz' not found"``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the data list(s):"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))

    def __reduce__(self):
        return (type(self), (self.problems,))
