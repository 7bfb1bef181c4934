"""Per-record problems found while transforming or planning.

A :class:`Note` becomes one ``sync_notes`` row. Notes never stop a run: they
tell an operator which record and which field needs attention and what the
sync did instead (left a field empty, used the pool, skipped the user).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Severities, least to most urgent. ``info``: expected, nothing to fix (a contact without a phone
#: number is not a phonebook entry); ``warning``: the sync worked around bad source data (a field left
#: out or shortened) and the data owner may want to fix it; ``error``: the record was not synced and
#: needs an operator (number collision, exhausted pool, a mailbox that could not be read).
INFO = "info"
WARNING = "warning"
ERROR = "error"
SEVERITIES = (INFO, WARNING, ERROR)


@dataclass(frozen=True)
class Note:
    """One per-record problem.

    :param object_type: kind of record, e.g. ``"user"`` or ``"extension"``.
    :param object_key: the record's key (the Graph user id for users).
    :param record_label: a human label for the record (the UPN for users).
    :param field: the source or target field concerned, or ``None``.
    :param severity: ``"info"`` (expected, nothing to fix), ``"warning"`` (the sync worked
        around bad data) or ``"error"`` (the record was not synced; an operator must act).
    :param message: a sentence naming the record and the field.
    """

    object_type: str
    object_key: str
    record_label: str
    field: str | None
    severity: str
    message: str


def user_note(user_id: str, label: str, field: str | None, message: str, severity: str = WARNING) -> Note:
    """Build a note about a Graph user; the message is prefixed with ``user <label>: ``.

    :param user_id: the Graph user id.
    :param label: the UPN (or the id when the UPN is unknown).
    :param field: the field concerned, or ``None``.
    :param message: the problem, without the ``user ...:`` prefix.
    :param severity: one of :data:`SEVERITIES`.
    :return: the note.
    """
    shown = label or user_id
    return Note(
        object_type="user",
        object_key=user_id,
        record_label=shown,
        field=field,
        severity=severity,
        message=f"user {shown}: {message}",
    )


def note_rows(notes: list[Note], run_key: str, now: datetime) -> list[dict[str, Any]]:
    """Turn notes into ``sync_notes`` rows (without the autoincrement id).

    :param notes: the notes of one run.
    :param run_key: the run they belong to.
    :param now: timestamp written to ``at``.
    :return: one dict per note.
    """
    return [
        {
            "run_key": run_key,
            "at": now,
            "object_type": n.object_type,
            "object_key": n.object_key,
            "record_label": n.record_label,
            "field": n.field,
            "severity": n.severity,
            "message": n.message,
        }
        for n in notes
    ]
