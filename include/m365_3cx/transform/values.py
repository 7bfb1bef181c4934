"""Small helpers that read cell values from staging frames.

Frames come from SQL or JSON and may hold ``None``, ``NaN``, ``pd.NA`` or
``NaT`` for a missing value, numpy arrays for JSON lists, and floats for
nullable integers. These helpers give every layer one notion of "missing".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd


def is_missing(value: object) -> bool:
    """Tell whether a cell value stands for "no value".

    :param value: any cell value.
    :return: ``True`` for ``None``, ``NaN``, ``pd.NA`` and ``NaT``.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        result = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return result is True or (isinstance(result, bool) and result)


def text(value: object) -> str | None:
    """Return a stripped string, or ``None`` for a missing or blank value.

    :param value: any cell value.
    :return: the text or ``None``.
    """
    if isinstance(value, str):  # the common case, without the missing-value probes
        return value.strip() or None
    if is_missing(value):
        return None
    s = str(value).strip()
    return s or None


def as_list(value: object) -> list[Any]:
    """Return a JSON list cell as a list (missing -> empty list).

    :param value: a list, tuple, numpy array or missing value.
    :return: a list.
    """
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping | bytes):
        return list(value)
    return []


def as_dict(value: object) -> dict[str, Any]:
    """Return a JSON object cell as a dict (missing or other types -> empty dict).

    :param value: a mapping or missing value.
    :return: a dict.
    """
    if isinstance(value, Mapping):
        return dict(value)
    return {}


_EXACT = 2**53


def as_int(value: object) -> int | None:
    """Return a nullable integer cell as ``int`` or ``None``.

    :param value: an int, a float holding an int, a digit string or a missing value.
    :return: the integer or ``None`` when missing or not a whole number.
    """
    if type(value) is int and -_EXACT <= value <= _EXACT:  # the common case (exact as a float too)
        return value
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not f.is_integer():
        return None
    return int(f)


def as_bool(value: object, default: bool) -> bool:
    """Return a nullable boolean cell as ``bool``.

    :param value: a bool, numpy bool, missing value or ``"true"``/``"false"`` text.
    :param default: what a missing value means.
    :return: the boolean.
    """
    if is_missing(value):
        return default
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y", "t"}
    return bool(value)


def ensure_columns(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Return ``frame`` with every column in ``columns`` present (added as ``None``).

    :param frame: the input frame (not modified).
    :param columns: the names that must exist.
    :return: the same frame, or a copy with the missing columns added.
    """
    missing = [c for c in columns if c not in frame.columns]
    if not missing:
        return frame
    out = frame.copy()
    for c in missing:
        out[c] = pd.Series([None] * len(out), index=out.index, dtype=object)
    return out
