"""Diff the desired company phonebook against 3CX, and apply the change set.

A 3CX contact is *managed* only when it is recorded in ``phonebook_map`` **and**
carries our ``Tag`` (``m365-sync:<key>``): ownership rests on our own markers only,
never on a value the PBX may stamp. Everything else in the phonebook (3CX's own M365,
CRM and Google contacts, hand-made entries, entries with a foreign tag) is never
read for a diff, updated or deleted. Entries are created with an explicit
``ContactType`` of :data:`OWN_CONTACT_TYPE` (``3CX``, a ``Pbx.ContactSource`` value:
not one of 3CX's own integrations, whose delete-by-type calls would otherwise remove
them), so nothing depends on the PBX's default either.

:func:`match_snapshot` turns the 3CX read into per-entry facts (present, current
fields, duplicates carrying the same tag). :func:`plan_phonebook` creates missing
entries (also ones deleted by hand), puts back hand edits of managed fields and
deletes entries nobody holds any more. :func:`apply_contact_changes` executes
the plan a few writes at a time (deletes batched through ``Pbx.DeleteContactsById``),
reporting the :class:`~m365_3cx.reconcile.apply.Outcome` objects chunk by chunk; a
fatal error fails that record only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import pandas as pd

from m365_3cx.errors import FatalError, RetriableError
from m365_3cx.reconcile.apply import FAILED, OK, SKIPPED, ApplyCounts, Outcome
from m365_3cx.reconcile.plan import CREATE, DELETE, UPDATE, Change
from m365_3cx.transform.phonebook import FIELD_COLUMNS, MANAGED_FIELDS, TAG_PREFIX, managed_values, target_fields
from m365_3cx.transform.values import as_bool, as_dict, as_int, as_list, ensure_columns, text

__all__ = [
    "CONTACT_OBJECT",
    "OWN_CONTACT_TYPE",
    "ContactWriter",
    "PhonebookPlan",
    "SnapshotMatch",
    "apply_contact_changes",
    "match_snapshot",
    "plan_phonebook",
]

log = logging.getLogger(__name__)

CONTACT_OBJECT: Final = "contact"
"""``object_type`` of phonebook changes in ``sync_plan`` / ``sync_audit``."""

OWN_CONTACT_TYPE: Final = "3CX"
"""``ContactType`` (``Pbx.ContactSource``: ``3CX`` | ``CRM`` | ``Google`` | ``M365``) sent with every create."""

DELETE_BATCH_SIZE: Final = 50

_ORDER: Final = {CREATE: 0, UPDATE: 1, DELETE: 2}


@dataclass(frozen=True)
class SnapshotMatch:
    """What the 3CX snapshot says about one ``phonebook_map`` entry.

    :param contact_key: the entry.
    :param threecx_id: the 3CX contact that is ours (the mapped one, else the lowest id carrying
        our tag: a create whose response was lost), or ``None``.
    :param present: a contact of ours exists in 3CX.
    :param current: its managed fields as read, or ``None``.
    :param duplicate_ids: other contacts carrying the same tag (to be deleted).
    :param relinked: ``threecx_id`` was found by tag, not by the map.
    """

    contact_key: str
    threecx_id: int | None
    present: bool
    current: dict[str, Any] | None
    duplicate_ids: list[int] = field(default_factory=list)
    relinked: bool = False


def is_foreign(contact: Mapping[str, Any], tag_prefix: str = TAG_PREFIX) -> bool:
    """True for a 3CX contact the sync must never touch: one without our tag.

    ``ContactType`` plays no part: 3CX's integrations never write our tag, and a PBX that
    stamps another type on our entries must not make the sync lose (and re-create) them.

    :param contact: a ``Pbx.Contact`` as read.
    :param tag_prefix: our tag prefix.
    :return: ``True`` unless its ``Tag`` starts with our prefix.
    """
    tag = text(contact.get("Tag")) or ""
    return not tag.startswith(tag_prefix)


def managed_fields_of(contact: Mapping[str, Any]) -> dict[str, Any]:
    """The managed fields of a ``Pbx.Contact`` (missing ones ``None``)."""
    return {f: contact.get(f) for f in MANAGED_FIELDS}


def match_snapshot(
    mapping: pd.DataFrame, contacts: Iterable[Mapping[str, Any]], tag_prefix: str = TAG_PREFIX
) -> tuple[list[SnapshotMatch], int]:
    """Match ``phonebook_map`` entries with the 3CX contacts just read.

    :param mapping: ``phonebook_map`` frame (``contact_key``, ``threecx_id``).
    :param contacts: every 3CX contact (``Id``, ``Tag``, ``ContactType`` and the managed fields).
    :param tag_prefix: our tag prefix.
    :return: one match per map row, and the number of 3CX contacts left alone (foreign).
    """
    by_key: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    foreign = 0
    cut = len(tag_prefix)
    for contact in contacts:
        cid = as_int(contact.get("Id"))
        if cid is None or is_foreign(contact, tag_prefix):
            foreign += 1
            continue
        by_key.setdefault((text(contact.get("Tag")) or "")[cut:], []).append((cid, contact))
    for found in by_key.values():
        if len(found) > 1:  # duplicates are rare: only their lists need ordering by id
            found.sort(key=lambda pair: pair[0])
    m = ensure_columns(mapping, ["contact_key", "threecx_id"])
    matches: list[SnapshotMatch] = []
    for raw_key, raw_id in zip(m["contact_key"], m["threecx_id"], strict=True):
        key = text(raw_key)
        if key is None:
            continue
        found = by_key.get(key)
        if not found:
            matches.append(SnapshotMatch(key, None, False, None))
            continue
        mapped = as_int(raw_id)
        at = next((i for i, (cid, _c) in enumerate(found) if cid == mapped), None) if mapped is not None else None
        relinked = at is None
        ours_id, ours = found[at or 0]
        duplicates = [cid for i, (cid, _c) in enumerate(found) if i != (at or 0)]
        matches.append(SnapshotMatch(key, ours_id, True, managed_fields_of(ours), duplicates, relinked))
    return matches, foreign


@dataclass(frozen=True)
class PhonebookPlan:
    """Result of :func:`plan_phonebook`.

    :param changes: creates, updates, deletes (each group by key).
    :param forget: map entries with no 3CX contact that are no longer desired (drop, no write).
    :param managed_count: managed entries present in 3CX (the mass-removal guard's base).
    """

    changes: list[Change] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    managed_count: int = 0


def plan_phonebook(desired: pd.DataFrame, mapping: pd.DataFrame) -> PhonebookPlan:
    """Diff desired entries against the managed 3CX contacts.

    :param desired: ``tgt_phonebook`` frame (rows with ``state`` other than ``active`` count as
        not desired).
    :param mapping: ``phonebook_map`` frame as the snapshot step left it (``threecx_id``,
        ``present``, ``current``, ``duplicate_ids``).
    :return: the plan. Only managed contacts appear in updates and deletes.
    """
    d = ensure_columns(desired, ["contact_key", "state", *FIELD_COLUMNS.values()])
    m = ensure_columns(mapping, ["contact_key", "threecx_id", "present", "current", "duplicate_ids"])
    entries: dict[str, dict[str, Any]] = {}
    for row in m.to_dict("records"):
        key = text(row["contact_key"])
        if key is not None:
            entries[key] = row
    changes: list[Change] = []
    wanted: set[str] = set()
    for row in d.to_dict("records"):
        key = text(row["contact_key"])
        if key is None or (text(row["state"]) or "active") != "active":
            continue
        wanted.add(key)
        want = dict(zip(MANAGED_FIELDS, managed_values(target_fields(row)), strict=True))
        number = want.get("PhoneNumber") or ""
        entry = entries.get(key)
        tid = as_int(entry["threecx_id"]) if entry else None
        if entry is not None and as_bool(entry["present"], False) and tid is not None:
            # The very values managed_fingerprint hashes: equal fingerprints, no diff.
            current = dict(zip(MANAGED_FIELDS, managed_values(as_dict(entry["current"])), strict=True))
            diff = {f: (current[f], want[f]) for f in MANAGED_FIELDS if current[f] != want[f]}
            if diff:
                changes.append(Change(UPDATE, key, number, tid, diff, "fields changed", CONTACT_OBJECT))
        else:
            reason = "new entry" if entry is None else "entry missing in 3CX, re-created"
            created = {f: (None, v) for f, v in want.items() if v is not None}
            created["ContactType"] = (None, OWN_CONTACT_TYPE)
            changes.append(Change(CREATE, key, number, None, created, reason, CONTACT_OBJECT))
    forget: list[str] = []
    managed = 0
    for key, entry in entries.items():
        tid = as_int(entry["threecx_id"])
        present = as_bool(entry["present"], False) and tid is not None
        managed += int(present)
        for dup in sorted({i for i in (as_int(x) for x in as_list(entry["duplicate_ids"])) if i is not None}):
            changes.append(Change(DELETE, key, "", dup, {}, "duplicate of a managed entry", CONTACT_OBJECT))
        if key in wanted:
            continue
        if present:
            changes.append(Change(DELETE, key, "", tid, {}, "no longer held by any in-scope mailbox",
                                  CONTACT_OBJECT))
        else:
            forget.append(key)
    changes.sort(key=lambda c: (_ORDER[c.action], c.object_key, c.threecx_id or 0))
    return PhonebookPlan(changes=changes, forget=sorted(forget), managed_count=managed)


class ContactWriter(Protocol):
    """The writes :func:`apply_contact_changes` needs (see :class:`~m365_3cx.threecx.client.ThreeCXClient`)."""

    def create_contact(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a contact and return it (with its ``Id``)."""
        ...

    def update_contact(self, contact_id: int, patch: Mapping[str, Any]) -> None:
        """Patch fields of one contact."""
        ...

    def delete_contact(self, contact_id: int) -> None:
        """Delete one contact."""
        ...

    def delete_contacts(self, ids: Iterable[int]) -> None:
        """Delete several contacts in one call."""
        ...


def _not_found(exc: FatalError) -> bool:
    return getattr(exc, "status", None) == 404


def apply_contact_changes(
    changes: list[Change],
    writer: ContactWriter,
    *,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_outcomes: Callable[[list[Outcome]], None] | None = None,
    before_create: Callable[[Change], None] | None = None,
    before_creates: Callable[[list[Change]], None] | None = None,
    dry_run: bool = False,
    concurrency: int = 1,
) -> ApplyCounts:
    """Execute a phonebook change set (already guarded), reporting every outcome.

    Creates and updates go up to ``concurrency`` at a time, outcomes reported per chunk
    (:func:`~m365_3cx.reconcile.concurrent.run_chunked`); deletes are sent in batches of
    :data:`DELETE_BATCH_SIZE` through ``writer.delete_contacts`` and, if a batch is refused,
    one by one (a contact that is already gone counts as deleted).

    :param changes: creates, updates, deletes.
    :param writer: the 3CX client.
    :param on_outcome: called once per change once its chunk is done.
    :param on_outcomes: called once per chunk with its outcomes (plan order), for bulk recording.
    :param before_create: called before each create is sent.
    :param before_creates: called with a chunk's creates before any of them is sent (to record the
        pending entries in one statement, so a create whose response is lost is re-linked by its tag).
    :param dry_run: write nothing; every outcome is ``skipped`` with error ``"dry run"``.
    :param concurrency: writes in flight at once.
    :return: the counts (``disabled`` is always 0 for contacts).
    :raises RetriableError: re-raised after reporting the failed change and the untried ones.
    """
    from m365_3cx.reconcile.apply import count_outcomes
    from m365_3cx.reconcile.concurrent import run_chunked

    def report(outcomes: list[Outcome]) -> None:
        if on_outcomes is not None:
            on_outcomes(outcomes)
        if on_outcome is not None:
            for outcome in outcomes:
                on_outcome(outcome)

    def skipped(change: Change) -> Outcome:
        return Outcome(change, SKIPPED, "not tried: stopped after a retriable error", change.threecx_id)

    if dry_run:
        outcomes = [Outcome(change, SKIPPED, "dry run", change.threecx_id) for change in changes]
        for start in range(0, len(outcomes), DELETE_BATCH_SIZE * 2):
            report(outcomes[start:start + DELETE_BATCH_SIZE * 2])
        return count_outcomes(outcomes)

    writes = [c for c in changes if c.action != DELETE]
    deletes = [c for c in changes if c.action == DELETE and c.threecx_id is not None]
    results: list[Outcome] = []

    def prepare(chunk: list[Change]) -> None:
        creates = [c for c in chunk if c.action == CREATE]
        if creates and before_creates is not None:
            before_creates(creates)
        if before_create is not None:
            for change in creates:
                before_create(change)

    def write(change: Change) -> Outcome:
        try:
            if change.action == CREATE:
                created = writer.create_contact({f: after for f, (_b, after) in change.fields.items()})
                return Outcome(change, OK, None, as_int((created or {}).get("Id")))
            if change.action == UPDATE and change.threecx_id is not None:
                writer.update_contact(change.threecx_id, {f: after for f, (_b, after) in change.fields.items()})
                return Outcome(change, OK, None, change.threecx_id)
            raise FatalError(f"cannot apply {change.action} of a phonebook entry without a 3CX id")
        except FatalError as exc:
            log.warning("phonebook change failed: %s of 3CX contact %s", change.action, change.threecx_id)
            return Outcome(change, FAILED, str(exc), change.threecx_id)

    def failed(change: Change, exc: BaseException) -> Outcome:
        return Outcome(change, FAILED, str(exc), change.threecx_id)

    def record(outcomes: list[Outcome]) -> None:
        results.extend(outcomes)
        report(outcomes)

    try:
        run_chunked(writes, write, failed=failed, skipped=skipped, record=record, before_chunk=prepare,
                    concurrency=concurrency)
    except BaseException:
        record([skipped(change) for change in deletes])
        raise

    def halt(failed_changes: list[Change], untried_from: int, exc: Exception) -> None:
        """Report the failed deletes and every later one as not tried (then the caller re-raises)."""
        chunk = [Outcome(c, FAILED, str(exc), c.threecx_id) for c in failed_changes]
        chunk += [skipped(rest) for rest in deletes[untried_from:]]
        record(chunk)
        log.warning("phonebook apply stopped after a retriable error (%d of %d deletes tried)",
                    untried_from, len(deletes))

    for start in range(0, len(deletes), DELETE_BATCH_SIZE):
        chunk = deletes[start:start + DELETE_BATCH_SIZE]
        if len(chunk) > 1:
            try:
                writer.delete_contacts([int(c.threecx_id) for c in chunk if c.threecx_id is not None])
            except RetriableError as exc:
                halt(chunk, start + len(chunk), exc)
                raise
            except FatalError:
                log.warning("batch delete of %d contacts refused; deleting them one by one", len(chunk))
            else:
                record([Outcome(change, OK, None, change.threecx_id) for change in chunk])
                continue
        done: list[Outcome] = []
        for offset, change in enumerate(chunk):
            try:
                writer.delete_contact(int(change.threecx_id or 0))
            except RetriableError as exc:
                record(done)
                halt([change], start + offset + 1, exc)
                raise
            except FatalError as exc:
                if not _not_found(exc):  # already gone counts as deleted
                    log.warning("phonebook change failed: delete of 3CX contact %s", change.threecx_id)
                    done.append(Outcome(change, FAILED, str(exc), change.threecx_id))
                    continue
            done.append(Outcome(change, OK, None, change.threecx_id))
        record(done)
    return count_outcomes(results)
