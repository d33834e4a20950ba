"""Command-line values as the bundles mean them.

``monai.bundle run`` parses ``--resume true`` with python-fire, which keeps ``true``/``false``/``null``
as strings; these helpers turn them into what the configs expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["as_bool", "as_optional", "as_pretrained"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"", "none", "null"}


def as_bool(value: Any) -> bool:
    """``True``/``"true"``/``"yes"``/``1`` -> True, ``False``/``"false"``/``"no"``/``0``/None -> False."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE or low in _NONE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {value!r}")
    return bool(value)


def as_optional(value: Any) -> Any:
    """``None``, ``""``, ``"none"`` and ``"null"`` -> None; anything else unchanged."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    return value


def as_pretrained(value: Any) -> bool | str:
    """``pretrained`` override: booleans (also as text), ``"auto"``, ``"imagenet"`` or a file path."""
    low = value.strip().lower() if isinstance(value, str) else None
    if low is None or low in _TRUE | _FALSE | _NONE:
        return as_bool(value)
    return value if low in {"auto", "imagenet"} else str(Path(value).expanduser())
