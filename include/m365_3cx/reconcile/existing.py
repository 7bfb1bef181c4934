"""Idempotent creates: before creating, look for what an earlier attempt already created.

A create whose response was lost (a crash or a dropped connection between "created in 3CX"
and "recorded in staging") is still open in the plan, so the task's retry would send it
again. Before a chunk of creates is sent, one filtered OData read per chunk
(``$filter=Tag eq 'a' or Tag eq 'b' …``, at most :data:`CHUNK` values) finds the records that
already carry our identity — the phonebook entry's ``Tag``, the extension's ``Number`` with the
user's own e-mail address — and the create is re-linked to that record instead of sent again.
Never one read per record; the chunks' reads go ``threecx.read_concurrency`` at a time
(:meth:`~m365_3cx.threecx.client.ThreeCXClient.read_filtered`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from m365_3cx.reconcile.plan import CREATE, Change

if TYPE_CHECKING:
    from m365_3cx.threecx.client import ThreeCXClient

__all__ = ["CHUNK", "RELINKED_NOTE", "existing_by", "existing_contacts", "existing_extensions"]

log = logging.getLogger(__name__)

RELINKED_NOTE: Final = "already in 3CX (created by an earlier attempt of this plan); re-linked, not created again"
"""The audit ``error`` text of a create that was re-linked instead of sent."""

CHUNK: Final = 20
"""Values per ``$filter`` (keeps the query string short; 3CX pages by 100)."""


def existing_by(threecx: ThreeCXClient, entity: str, field: str, values: Iterable[str],
                select: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Records of ``entity`` whose ``field`` equals one of ``values``, by value.

    :param threecx: the 3CX client.
    :param entity: entity set (``Contacts``, ``Users``).
    :param field: a string property.
    :param values: the wanted values (deduplicated; empty ones ignored).
    :param select: properties to read (``field`` and ``Id`` are added).
    :return: ``{value: [record, …]}`` for the values found.
    """
    from m365_3cx.threecx.client import odata_quote

    wanted = sorted({v for v in values if v})
    columns = list(dict.fromkeys(["Id", field, *select]))
    chunks = [wanted[start:start + CHUNK] for start in range(0, len(wanted), CHUNK)]
    filters = [" or ".join(f"{field} eq {odata_quote(v)}" for v in chunk) for chunk in chunks]
    found: dict[str, list[dict[str, Any]]] = {}
    for chunk, records in zip(chunks, threecx.read_filtered(entity, filters, select=columns), strict=True):
        asked = set(chunk)
        for record in records:
            key = record.get(field)
            if isinstance(key, str) and key in asked:
                found.setdefault(key, []).append(dict(record))
    return found


def _after(change: Change, field: str) -> str:
    value = change.fields.get(field, (None, None))[1]
    return str(value) if value is not None else ""


def existing_contacts(threecx: ThreeCXClient, changes: Sequence[Change]) -> dict[int, int]:
    """For each phonebook create whose ``Tag`` is already in 3CX: the existing contact's id.

    :return: ``{id(change): 3CX contact id}`` (the lowest id when several carry the tag).
    """
    creates = [c for c in changes if c.action == CREATE and _after(c, "Tag")]
    if not creates:
        return {}
    found = existing_by(threecx, "Contacts", "Tag", (_after(c, "Tag") for c in creates), ["Tag"])
    out = {id(c): min(int(r["Id"]) for r in found[_after(c, "Tag")]) for c in creates if _after(c, "Tag") in found}
    if out:
        log.warning("phonebook: %d planned create(s) already in 3CX (an earlier attempt created them); re-linked",
                    len(out))
    return out


def existing_extensions(threecx: ThreeCXClient, changes: Sequence[Change]) -> dict[int, int]:
    """For each extension create whose number is already a 3CX user with that user's e-mail: its id.

    A number held by a user with another address is not ours: that create is left to fail as a
    number collision.

    :return: ``{id(change): 3CX user id}``.
    """
    creates = [c for c in changes if c.action == CREATE and c.number]
    if not creates:
        return {}
    found = existing_by(threecx, "Users", "Number", (c.number for c in creates), ["EmailAddress"])
    out: dict[int, int] = {}
    for change in creates:
        email = _after(change, "EmailAddress").strip().casefold()
        mine = [r for r in found.get(change.number, []) if email and _mail(r) == email]
        if mine:
            out[id(change)] = int(mine[0]["Id"])
    if out:
        log.warning("extensions: %d planned create(s) already in 3CX (an earlier attempt created them); re-linked",
                    len(out))
    return out


def _mail(record: Mapping[str, Any]) -> str:
    return str(record.get("EmailAddress") or "").strip().casefold()
