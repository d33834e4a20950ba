"""Apply each surviving mutant of a mutmut ``survivors.diff`` by hand and run the given tests against it.

    python scripts/apply_diffs.py runs/mutation/split.py/survivors.diff mri_slice_transfer/split.py \
        tests/test_mutation_split.py tests/test_split.py

For each ``# <mutant>: survived`` block the ``-`` lines are replaced by the ``+`` lines in SOURCE (only where
they occur exactly once, at the indentation of a function or method body), the tests run with pytest, and
the source is restored. Prints ``<mutant> killed|SURVIVED|NOT-APPLIED`` per mutant. Run it on a scratch copy
of the repository (with ``PYTHONPATH`` pointing there): SOURCE is rewritten while the tests run.
"""

from __future__ import annotations

import re
import subprocess
import sys


def _lines(block: str, sign: str) -> list[str]:
    return [ln[1:] for ln in block.splitlines() if ln.startswith(sign) and not ln.startswith(sign * 3)]


def main(diff_path: str, source: str, *tests: str) -> None:
    """Apply every survivor of ``diff_path`` to ``source`` in turn and run ``tests`` against it."""
    blocks = re.split(r"^# ", open(diff_path, encoding="utf-8").read(), flags=re.M)[1:]
    original = open(source, encoding="utf-8").read()
    for block in blocks:
        name = block.split(":")[0].strip()
        minus, plus = _lines(block, "-"), _lines(block, "+")
        mutated = None
        for indent in ("", "    ", "        "):  # mutmut shows a function dedented to column 0
            old = "\n".join(indent + ln if ln else ln for ln in minus)
            new = "\n".join(indent + ln if ln else ln for ln in plus)
            if old and original.count(old) == 1:
                mutated = original.replace(old, new)
                break
        if mutated is None:
            print(name, "NOT-APPLIED", flush=True)
            continue
        try:
            open(source, "w", encoding="utf-8").write(mutated)
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            print(name, "killed" if result.returncode else "SURVIVED", flush=True)
        finally:
            open(source, "w", encoding="utf-8").write(original)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
