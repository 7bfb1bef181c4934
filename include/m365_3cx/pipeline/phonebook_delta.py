"""The incremental phonebook transform (delta and full runs) and the delta runs' plan.

A full transform recomputes every entry from every staged contact and records which entry each
contact feeds (``tgt_phonebook_sources``), the settings fingerprint it used and when it ran
(``transform_state``, ``full_at``). A later run's transform then only:

1. finds the *dirty* contacts: changed and not yet carried to 3CX (the same ``pending_filter``
   the users use, deletions included), every contact of an owner who changed (scope, deletion,
   ``usageLocation``), and recorded sources whose staged contact was purged;
2. computes their new entry keys, takes their old keys from the record, and reads every contact
   that feeds one of those entries;
3. recomputes just those entries (an entry nobody feeds any more is kept as ``removed``), all
   stamped with the run key, so a delta plan diffs exactly them (plus entries whose write failed
   since the last full run).

A contact's key depends on the contact, its owner's ``usageLocation`` and the settings only
(:mod:`m365_3cx.transform.phonebook`), which is why step 2 is closed. The run falls back to the
full transform (and a delta run to the whole diff) when there is no record yet, when the
fingerprint changed, and when the run that made the stored targets did not reach 3CX (a dry,
failed or on-demand run). Removals an approver rejected are planned again by the next full run,
not by every delta.

A **full run** (nightly reconciliation) takes the same incremental transform, but still diffs the
whole phonebook against its whole 3CX snapshot. Its contacts extract is an initial delta round
per stream: a contact that did not change is recognised by ``row_hash`` and not rewritten, one
the round did not return (or of a stream gone) is soft-deleted with the run's key, one that got
the exclusion category is purged (an orphan source), and the users extract stamps owners whose
scope or ``usageLocation`` changed — so step 1 sees exactly the change there too. As a safety
net against drift between staging and targets, a full run recomputes everything when the last
full recompute is older than :data:`FULL_RECOMPUTE_AGE` (or unknown), and with ``full_resync``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from m365_3cx.staging import contacts as crepo
from m365_3cx.staging import phonebook_sources as sources
from m365_3cx.staging.frames import load_frame
from m365_3cx.staging.schema import phonebook_map, stg_contacts, sync_plan, sync_runs

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from m365_3cx.transform.phonebook import PhonebookParams, PhonebookResult

__all__ = ["FEATURE", "FULL_RECOMPUTE_AGE", "IncrementalTransform", "delta_plan_keys", "transform_incremental"]

log = logging.getLogger(__name__)

FEATURE: Final = "phonebook"
"""``transform_state.feature`` of the phonebook."""

_CHUNK: Final = 500

FULL_RECOMPUTE_AGE: Final = timedelta(days=7)
"""A full run recomputes every entry when the last full recompute is older than this, so no drift
between staging and targets outlives it (delta runs do not look at it)."""

RETRY_WINDOW: Final = timedelta(days=2)
"""How far back a delta plan looks for failed phonebook writes (the nightly full run retries all)."""


@dataclass(frozen=True)
class IncrementalTransform:
    """What :func:`transform_incremental` recomputed (counts for the task's return value)."""

    result: PhonebookResult
    entries: int
    removed: int
    dirty: int
    read: int


def _load_contacts(conn: Connection, pairs: Collection[sources.Pair]) -> Any:
    import pandas as pd

    frames = []
    items = sorted(pairs)
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        where = sa.and_(stg_contacts.c.deleted.is_(False),
                        sa.tuple_(stg_contacts.c.owner_id, stg_contacts.c.contact_id).in_(chunk))
        frames.append(load_frame(conn, "stg_contacts", where=where))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else load_frame(conn, "stg_contacts",
                                                                                where=sa.false())


def _dirty_contacts(conn: Connection, run_key: str, changed_owners: Collection[str]) -> set[sources.Pair] | None:
    from m365_3cx.pipeline.users import pending_filter

    condition = pending_filter(conn, stg_contacts, run_key)
    if condition is None:  # nothing ever reached 3CX: everything is pending
        return None
    query = sa.select(stg_contacts.c.owner_id, stg_contacts.c.contact_id).where(condition)
    dirty = {(o, c) for o, c in conn.execute(query)}
    if changed_owners:
        # a shared mailbox's contacts are staged under "shared:<mailbox id>" and take its region too
        owners = {*changed_owners, *(f"shared:{uid}" for uid in changed_owners)}
        dirty |= sources.contact_pairs_of_owners(conn, owners)
        dirty |= sources.sources_of_owners(conn, owners)
    return dirty | sources.orphan_sources(conn)


def transform_incremental(engine: Engine, params: PhonebookParams, fingerprint: str, run_key: str,
                          changed_owners: Collection[str], now: datetime,
                          recompute_after: timedelta | None = None) -> IncrementalTransform | None:
    """Recompute only the entries the change touches (see the module docstring).

    :param fingerprint: :func:`~m365_3cx.transform.phonebook.params_fingerprint` of ``params``.
    :param changed_owners: users whose change has not reached 3CX yet (``pending_user_keys``).
    :param recompute_after: a full run's bound (:data:`FULL_RECOMPUTE_AGE`): recompute everything
        when the last full recompute is older than this or unknown; ``None`` (delta runs): no bound.
    :return: what was recomputed and written, or ``None`` when a full transform is needed.
    """
    from m365_3cx.pipeline.users import run_was_applied
    from m365_3cx.transform.phonebook import TARGET_COLUMNS, desired_phonebook

    with engine.connect() as conn:
        basis = sources.transform_basis(conn, FEATURE)
        why = None
        if basis is None:
            why = "no record of the last transform"
        elif basis["params_hash"] != fingerprint:
            why = "settings changed"
        elif not run_was_applied(conn, basis["run_key"]):
            # a dry, failed or on-demand run computed the stored targets: what reached 3CX is
            # older than them, so only a whole diff is sure to carry everything
            why = "the last transform's run did not reach 3CX"
        elif recompute_after is not None and (basis["full_at"] is None or basis["full_at"] <= now - recompute_after):
            why = (f"the last full recompute ({basis['full_at'] or 'unknown'}) is older than "
                   f"{recompute_after.days} days")
        if why is not None:
            log.info("phonebook transform: %s, recomputing every entry", why)
            return None
        dirty = _dirty_contacts(conn, run_key, changed_owners)
        if dirty is None:
            return None
        old_keys = sources.keys_of_pairs(conn, dirty)
        dirty_rows = _load_contacts(conn, dirty)
        users = load_frame(conn, "stg_users")
    probe = desired_phonebook(dirty_rows, users, params)
    keys = set(old_keys.values()) | {key for _o, _c, key in probe.sources}
    with engine.connect() as conn:
        feeding = sources.entries_fed_by(conn, keys) - dirty
        frame = _load_contacts(conn, feeding)
        previous = crepo.load_entries(conn, "tgt_phonebook", keys)
    import pandas as pd

    frames = [f for f in (dirty_rows, frame) if len(f)]
    contacts = pd.concat(frames, ignore_index=True) if frames else dirty_rows
    result = desired_phonebook(contacts, users, params)
    rows = result.frame.to_dict("records")
    produced = {row["contact_key"] for row in rows}
    removed = [{col: row.get(col) for col in TARGET_COLUMNS} | {"state": "removed"}
               for row in previous.to_dict("records") if row["contact_key"] not in produced]
    with engine.begin() as conn:
        crepo.patch_phonebook_targets(conn, rows + removed, run_key, now)
        sources.patch_sources(conn, dirty | feeding, result.sources, run_key)
        sources.set_transform_basis(conn, FEATURE, fingerprint, sources.INCREMENTAL, run_key, now)
    log.info("phonebook transform (incremental): %d dirty contacts, %d contacts read, %d entries recomputed, "
             "%d no longer fed", len(dirty), len(dirty) + len(feeding), len(rows), len(removed))
    return IncrementalTransform(result, len(rows), len(removed), len(dirty), len(dirty) + len(feeding))


def delta_plan_keys(engine: Engine, run_key: str, now: datetime) -> set[str] | None:
    """The entries a delta run's plan must diff, or ``None`` for all of them.

    All of them unless this run's transform was incremental; then the entries it recomputed, the
    entries whose write failed since the last successful full run (at most :data:`RETRY_WINDOW`
    back; retried on every delta run, as a whole-phonebook diff would), and the entries whose
    create is still pending.
    """
    with engine.connect() as conn:
        basis = sources.transform_basis(conn, FEATURE)
        if basis is None or basis["run_key"] != run_key or basis["scope"] != sources.INCREMENTAL:
            return None
        keys = sources.targets_of_run(conn, run_key)
        keys |= _failed_since_last_full(conn, now)
        keys |= {k for (k,) in conn.execute(sa.select(phonebook_map.c.contact_key)
                                            .where(phonebook_map.c.status == "pending"))}
    return keys


def _failed_since_last_full(conn: Connection, now: datetime) -> set[str]:
    from m365_3cx.pipeline.contacts import contact_plan_key

    last_full = conn.execute(sa.select(sa.func.max(sync_runs.c.started_at)).where(
        sync_runs.c.status == "success", sync_runs.c.mode == "full", sync_runs.c.dry_run.is_(False))).scalar()
    since = now - RETRY_WINDOW
    if last_full is not None and last_full > since:
        since = last_full
    query = sa.select(sync_runs.c.run_key).where(sync_runs.c.started_at >= since)
    plan_keys = [contact_plan_key(k) for (k,) in conn.execute(query)]
    failed: set[str] = set()
    for start in range(0, len(plan_keys), _CHUNK):
        rows = conn.execute(sa.select(sync_plan.c.object_key).distinct().where(
            sync_plan.c.run_key.in_(plan_keys[start:start + _CHUNK]), sync_plan.c.object_type == "contact",
            sync_plan.c.status == "failed"))
        failed.update(k for (k,) in rows)
    return failed
