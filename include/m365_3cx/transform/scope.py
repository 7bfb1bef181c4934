"""Which staged users should have an active 3CX extension, and why not.

Also: which users are *protected* (their extension is never created, changed or removed:
``scope.protected_upns``, ``scope.protected_group_id``, or opted out with
``scope.opt_out_attribute``), and :func:`explain_scope`, the why of one user for the console
and the on-demand trace.

Precedence: ``deleted`` > not ``in_scope`` > guest (unless guests are
included) > ``account_enabled`` false. A missing ``account_enabled`` counts as
enabled (Graph delta pages may omit it); a missing ``in_scope`` counts as in
scope and a missing ``deleted`` as not deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from m365_3cx.transform.values import as_dict, ensure_columns, is_missing, text

ACTIVE = "active"
REMOVED = "removed"
REASON_DELETED = "deleted"
REASON_OUT_OF_SCOPE = "out_of_scope"
REASON_DISABLED = "disabled"


def _truth(v: object, default: bool) -> bool:
    """One nullable boolean cell, missing -> ``default``."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return default
    if isinstance(v, str):
        return v.strip().lower() in {"1", "true", "yes", "t"}
    return bool(v)


def _flag(series: pd.Series, default: bool) -> np.ndarray:
    """Read a nullable boolean column as a numpy bool array, missing -> ``default``."""
    return np.array([_truth(v, default) for v in series.astype(object).to_numpy()], dtype=bool)


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


# ------------------------------------------------------------------ protected users and opt-out

PROTECTED_UPN = "protected_upn"
PROTECTED_GROUP = "protected_group"
OPTED_OUT = "opted_out"


@dataclass(frozen=True)
class ProtectionParams:
    """Users whose extensions the sync never creates, changes or removes.

    :param upns: protected UPNs, lower case.
    :param group_id: the protected group (membership is staged as ``stg_users.protected_group``).
    :param opt_out_attribute: the ``onPremisesExtensionAttributes`` key a user opts out with.
    :param opt_out_value: the value that opts out (compared trimmed, case-insensitively).
    """

    upns: frozenset[str] = frozenset()
    group_id: str | None = None
    opt_out_attribute: str | None = None
    opt_out_value: str = "no-3cx-sync"

    @classmethod
    def from_settings(cls, settings: Any) -> ProtectionParams:
        """Build the parameters from ``settings.scope`` (attributes are only read)."""
        s = settings.scope
        return cls(upns=frozenset(u.strip().lower() for u in getattr(s, "protected_upns", ()) or ()),
                   group_id=getattr(s, "protected_group_id", None),
                   opt_out_attribute=getattr(s, "opt_out_attribute", None),
                   opt_out_value=str(getattr(s, "opt_out_value", "no-3cx-sync")))


def protection_of(upn: object, extension_attributes: object, protected_group: object,
                  params: ProtectionParams) -> str | None:
    """Why one user's extension is left alone: :data:`PROTECTED_UPN`, :data:`PROTECTED_GROUP`,
    :data:`OPTED_OUT`, or ``None`` (the sync manages it). The first that applies wins."""
    name = text(upn)
    if name is not None and name.lower() in params.upns:
        return PROTECTED_UPN
    if params.group_id and _truth(protected_group, False):
        return PROTECTED_GROUP
    if params.opt_out_attribute:
        value = text(as_dict(extension_attributes).get(params.opt_out_attribute))
        if value is not None and value.casefold() == params.opt_out_value.strip().casefold():
            return OPTED_OUT
    return None


def protections(users: pd.DataFrame, params: ProtectionParams) -> pd.Series:
    """:func:`protection_of` for every user of a ``stg_users`` frame (object series, ``None`` = managed)."""
    u = ensure_columns(users, ["user_principal_name", "extension_attributes", "protected_group"])
    values = [protection_of(upn, attrs, group, params) for upn, attrs, group in
              zip(u["user_principal_name"], u["extension_attributes"], u["protected_group"], strict=True)]
    return pd.Series(values, index=u.index, dtype=object)


def protection_message(reason: str, params: ProtectionParams) -> str:
    """One sentence an operator reads for a :func:`protection_of` reason."""
    if reason == PROTECTED_UPN:
        return "protected: listed in scope.protected_upns"
    if reason == PROTECTED_GROUP:
        return f"protected: member of the protected group {params.group_id} (scope.protected_group_id)"
    return (f"opted out: {params.opt_out_attribute} is {params.opt_out_value!r} "
            "(scope.opt_out_attribute / opt_out_value)")


# ------------------------------------------------------------------ scope explanation


@dataclass(frozen=True)
class ScopeParams:
    """The settings a scope explanation quotes."""

    group_id: str | None = None
    user_filter: str | None = None
    include_guests: bool = False
    protection: ProtectionParams = field(default_factory=ProtectionParams)

    @classmethod
    def from_settings(cls, settings: Any) -> ScopeParams:
        """Build the parameters from ``settings.scope``."""
        s = settings.scope
        return cls(group_id=s.group_id, user_filter=s.user_filter, include_guests=bool(s.include_guests),
                   protection=ProtectionParams.from_settings(settings))


IN_SCOPE = "in_scope"
OUT_OF_SCOPE = "out_of_scope"
PROTECTED = "protected"


@dataclass(frozen=True)
class ScopeExplanation:
    """Why a user is in or out of scope.

    :param verdict: ``in_scope`` (the sync keeps an active extension), ``out_of_scope`` (the removal
        policy applies) or ``protected`` (the extension is left alone, whatever else applies).
    :param reasons: ``(code, message)`` pairs, every one that applies; codes: ``deleted``,
        ``not_in_group``, ``filter``, ``guest``, ``disabled``, ``protected_upn``, ``protected_group``,
        ``opted_out``, ``no_mail`` (information only) and ``in_scope``.
    """

    verdict: str
    reasons: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"verdict", "reasons": [{"code", "message"}]}``."""
        return {"verdict": self.verdict, "reasons": [{"code": c, "message": m} for c, m in self.reasons]}


def explain_scope(user: Mapping[str, Any], params: ScopeParams) -> ScopeExplanation:
    """Explain one staged user's scope from its ``stg_users`` row and the scope settings.

    :param user: a ``stg_users`` row (``deleted``, ``deleted_at``, ``in_scope``, ``scope_miss``,
        ``user_type``, ``account_enabled``, ``mail``, ``user_principal_name``,
        ``extension_attributes``, ``protected_group``).
    :param params: the scope settings.
    """
    out: list[tuple[str, str]] = []
    if _truth(user.get("deleted"), False):
        since = user.get("deleted_at")
        when = f" since {pd.Timestamp(since):%Y-%m-%d %H:%M} UTC" if not is_missing(since) else ""
        out.append(("deleted", f"deleted in Entra (in deleted items or gone){when}"))
    miss = set((text(user.get("scope_miss")) or "").split(",")) - {""}
    if "group" in miss:
        out.append(("not_in_group", f"not a member of the scope group {params.group_id} (scope.group_id)"))
    if "filter" in miss:
        out.append(("filter", f"does not match the user filter {params.user_filter!r} (scope.user_filter)"))
    if not miss and not _truth(user.get("in_scope"), True):
        out.append(("not_in_group", "not in the scope group or filter"))
    guest = (text(user.get("user_type")) or "").lower() == "guest"
    if guest and not params.include_guests:
        out.append(("guest", "a guest (userType Guest; scope.include_guests is off)"))
    if not _truth(user.get("account_enabled"), True):
        out.append(("disabled", "account disabled in Entra (accountEnabled false)"))
    excluded = bool(out)
    reason = protection_of(user.get("user_principal_name"), user.get("extension_attributes"),
                           user.get("protected_group"), params.protection)
    if reason is not None:
        out.append((reason, protection_message(reason, params.protection) + "; its extension is never "
                    "created, changed or removed"))
    if not excluded:
        out.append((IN_SCOPE, _in_scope_message(params, guest)))
    if text(user.get("mail")) is None:
        out.append(("no_mail", "no mail address: EmailAddress stays empty and no mailbox (contacts, "
                               "calendar) is read"))
    verdict = PROTECTED if reason is not None else OUT_OF_SCOPE if excluded else IN_SCOPE
    return ScopeExplanation(verdict, tuple(out))


def _in_scope_message(params: ScopeParams, guest: bool) -> str:
    parts = []
    if params.group_id:
        parts.append(f"a member of the scope group {params.group_id}")
    if params.user_filter:
        parts.append(f"matches the user filter {params.user_filter!r}")
    text_ = "in scope: " + (" and ".join(parts) if parts else "every user is in scope (no scope group or filter)")
    return text_ + ("; a guest, included (scope.include_guests)" if guest else "")
