"""Which staged users should have an active 3CX extension, and why not.

Precedence: ``deleted`` > not ``in_scope`` > guest (unless guests are
included) > ``account_enabled`` false. A missing ``account_enabled`` counts as
enabled (Graph delta pages may omit it); a missing ``in_scope`` counts as in
scope and a missing ``deleted`` as not deleted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from m365_3cx.transform.values import ensure_columns

ACTIVE = "active"
REMOVED = "removed"
REASON_DELETED = "deleted"
REASON_OUT_OF_SCOPE = "out_of_scope"
REASON_DISABLED = "disabled"


def _flag(series: pd.Series, default: bool) -> np.ndarray:
    """Read a nullable boolean column as a numpy bool array, missing -> ``default``."""
    values = series.astype(object).to_numpy()
    out = np.empty(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            out[i] = default
        elif isinstance(v, str):
            out[i] = v.strip().lower() in {"1", "true", "yes", "t"}
        else:
            out[i] = bool(v)
    return out


def user_states(users: pd.DataFrame, include_guests: bool = False) -> pd.DataFrame:
    """Compute ``state`` and ``removal_reason`` for every user.

    :param users: users frame (``stg_users`` columns; ``deleted``, ``in_scope``,
        ``user_type`` and ``account_enabled`` are read).
    :param include_guests: keep guests (``user_type == "Guest"``) in scope.
    :return: a frame on the same index with ``state`` (``active``/``removed``)
        and ``removal_reason`` (``deleted``/``out_of_scope``/``disabled`` or ``None``).
    """
    u = ensure_columns(users, ["deleted", "in_scope", "user_type", "account_enabled"])
    deleted = _flag(u["deleted"], False)
    in_scope = _flag(u["in_scope"], True)
    enabled = _flag(u["account_enabled"], True)
    guest = u["user_type"].astype(object).map(lambda v: isinstance(v, str) and v.strip().lower() == "guest")
    guest_arr = guest.to_numpy(dtype=bool) if not include_guests else np.zeros(len(u), dtype=bool)
    reason = np.select(
        [deleted, ~in_scope | guest_arr, ~enabled],
        [REASON_DELETED, REASON_OUT_OF_SCOPE, REASON_DISABLED],
        default="",
    )
    reason_obj = pd.Series(reason, index=u.index, dtype=object).where(reason != "", None)
    state = pd.Series(np.where(reason == "", ACTIVE, REMOVED), index=u.index, dtype=object)
    return pd.DataFrame({"state": state, "removal_reason": reason_obj}, index=u.index)
