"""The first planned changes of a step, for its task log (``logs.plan_preview``, default 10).

What a line shows is what the audit already shows an operator, minus the values: the action, the
extension number, the user's UPN (or a phonebook entry's key) and the *names* of the fields that
change. Field values (names, phone numbers, e-mail addresses) stay in ``sync_plan``/``sync_audit``,
which only the staging DB and the console show; task logs are readable by every Airflow viewer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any


def log_plan_preview(logger: logging.Logger, feature: str, changes: Sequence[Any], limit: int) -> int:
    """Log the first ``limit`` changes (``Change`` or ``ProfileSwitch``); return how many were shown."""
    if limit <= 0 or not changes:
        return 0
    shown = list(changes)[:limit]
    more = len(changes) - len(shown)
    logger.info("%s plan, first %d of %d change(s)%s:", feature, len(shown), len(changes),
                f" ({more} more in sync_plan)" if more else "")
    for change in shown:
        logger.info("  %s", describe(change))
    return len(shown)


def describe(change: Any) -> str:
    """One readable line for a planned change, without field values."""
    if hasattr(change, "after") and hasattr(change, "before"):  # a presence ProfileSwitch
        return (f"set status of extension {change.number or '?'}: {change.before or '(none)'} -> {change.after} "
                f"({change.reason})")
    who = change.label or change.object_key
    if change.object_type == "contact":
        who = f"phonebook entry {change.object_key[:12]}"
        if change.threecx_id is not None:
            who += f" (3CX id {change.threecx_id})"
    number = f" {change.number}" if change.number and change.object_type != "contact" else ""
    fields = sorted(change.fields)
    detail = f" fields {', '.join(fields)}" if fields and change.action == "update" else ""
    return f"{change.action}{number} {who}{detail} — {change.reason}"
