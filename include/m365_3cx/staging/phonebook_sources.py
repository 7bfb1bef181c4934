"""``tgt_phonebook_sources`` and ``transform_state``: what an incremental phonebook transform needs.

The full transform records, per source contact, the entry it feeds, and the fingerprint of the
settings it was computed with. A delta run then recomputes only the entries fed by contacts (or
owners) that changed, reading just the contacts that feed those entries. Every query here takes
keys in chunks, so the statements grow with the change, never with the tenant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import and_, delete, select, tuple_
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.schema import stg_contacts, tgt_phonebook, tgt_phonebook_sources, transform_state

__all__ = [
    "FULL",
    "INCREMENTAL",
    "Pair",
    "contact_pairs_of_owners",
    "entries_fed_by",
    "keys_of_pairs",
    "orphan_sources",
    "patch_sources",
    "replace_sources",
    "set_transform_basis",
    "sources_of_owners",
    "targets_of_run",
    "transform_basis",
]

Pair = tuple[str, str]
"""``(owner_id, contact_id)`` of a staged contact."""

FULL: Final = "full"
INCREMENTAL: Final = "incremental"

_CHUNK: Final = 500


def _chunks(values: Iterable[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    items = sorted(values)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _pair_clause(pairs: Sequence[Pair]) -> Any:
    return tuple_(tgt_phonebook_sources.c.owner_id, tgt_phonebook_sources.c.contact_id).in_(pairs)


def replace_sources(conn: Connection, sources: Iterable[tuple[str, str, str]], run_key: str) -> int:
    """Make ``tgt_phonebook_sources`` hold exactly ``sources`` (a full transform), writing the difference.

    :param sources: ``(owner_id, contact_id, contact_key)`` of every contact that feeds an entry.
    :return: rows written (inserted, changed or deleted).
    """
    wanted = {(owner, cid): key for owner, cid, key in sources}
    t = tgt_phonebook_sources
    stored = {(owner, cid): key for owner, cid, key in conn.execute(select(t.c.owner_id, t.c.contact_id,
                                                                           t.c.contact_key))}
    gone = [pair for pair in stored if pair not in wanted]
    for chunk in _chunks(gone):
        conn.execute(delete(t).where(_pair_clause(chunk)))
    changed = [{"owner_id": o, "contact_id": c, "contact_key": k, "run_key": run_key}
               for (o, c), k in wanted.items() if stored.get((o, c)) != k]
    upsert(conn, t, changed, ["owner_id", "contact_id"])
    return len(gone) + len(changed)


def patch_sources(conn: Connection, recomputed: Collection[Pair], sources: Iterable[tuple[str, str, str]],
                  run_key: str) -> int:
    """Replace the rows of the ``recomputed`` contacts by what the incremental transform found.

    :param recomputed: every contact the transform read (whether or not it feeds an entry now).
    :param sources: ``(owner_id, contact_id, contact_key)`` of those that feed an entry.
    :return: rows written.
    """
    t = tgt_phonebook_sources
    for chunk in _chunks(recomputed):
        conn.execute(delete(t).where(_pair_clause(chunk)))
    rows = [{"owner_id": o, "contact_id": c, "contact_key": k, "run_key": run_key} for o, c, k in sources]
    upsert(conn, t, rows, ["owner_id", "contact_id"])
    return len(rows)


def keys_of_pairs(conn: Connection, pairs: Collection[Pair]) -> dict[Pair, str]:
    """The entry each of these contacts fed in the last transform (absent: it fed none)."""
    t = tgt_phonebook_sources
    found: dict[Pair, str] = {}
    for chunk in _chunks(pairs):
        query = select(t.c.owner_id, t.c.contact_id, t.c.contact_key).where(_pair_clause(chunk))
        found.update({(o, c): k for o, c, k in conn.execute(query)})
    return found


def _pairs_where(conn: Connection, table: Any, column: Any, values: Collection[str]) -> set[Pair]:
    """``(owner_id, contact_id)`` of the rows whose ``column`` is one of ``values`` (500 per statement)."""
    found: set[Pair] = set()
    for chunk in _chunks(values):
        query = select(table.c.owner_id, table.c.contact_id).where(column.in_(chunk))
        found.update((o, c) for o, c in conn.execute(query))
    return found


def sources_of_owners(conn: Connection, owner_ids: Collection[str]) -> set[Pair]:
    """Contacts of these owners that fed an entry in the last transform."""
    t = tgt_phonebook_sources
    return _pairs_where(conn, t, t.c.owner_id, owner_ids)


def contact_pairs_of_owners(conn: Connection, owner_ids: Collection[str]) -> set[Pair]:
    """Staged contacts (deleted ones included) of these owners."""
    return _pairs_where(conn, stg_contacts, stg_contacts.c.owner_id, owner_ids)


def entries_fed_by(conn: Connection, keys: Collection[str]) -> set[Pair]:
    """Every contact that fed one of these entries in the last transform."""
    t = tgt_phonebook_sources
    return _pairs_where(conn, t, t.c.contact_key, keys)


def orphan_sources(conn: Connection) -> set[Pair]:
    """Recorded sources whose staged contact is gone (purged, e.g. it got the exclusion category):
    one anti-join, answered from the two primary keys."""
    t, c = tgt_phonebook_sources, stg_contacts
    query = (select(t.c.owner_id, t.c.contact_id)
             .outerjoin(c, and_(c.c.owner_id == t.c.owner_id, c.c.contact_id == t.c.contact_id))
             .where(c.c.contact_id.is_(None)))
    return {(o, cid) for o, cid in conn.execute(query)}


def transform_basis(conn: Connection, feature: str) -> dict[str, Any] | None:
    """The fingerprint, run, scope (``full``/``incremental``), time and time of the last full
    recompute (``full_at``, ``None`` when unknown) of the feature's last transform."""
    t = transform_state
    row = conn.execute(select(t.c.params_hash, t.c.run_key, t.c.scope, t.c.computed_at, t.c.full_at)
                       .where(t.c.feature == feature)).first()
    if row is None:
        return None
    return {"params_hash": row[0], "run_key": row[1], "scope": row[2], "computed_at": row[3], "full_at": row[4]}


def set_transform_basis(conn: Connection, feature: str, params_hash: str, scope: str, run_key: str,
                        now: dt.datetime) -> None:
    """Record what the feature's stored targets were just computed with (and how).

    A ``full`` transform also sets ``full_at``; an incremental one leaves it as it was.
    """
    row = {"feature": feature, "params_hash": params_hash, "scope": scope, "run_key": run_key, "computed_at": now}
    if scope == FULL:
        upsert(conn, transform_state, [row | {"full_at": now}], ["feature"])
    else:
        upsert(conn, transform_state, [row], ["feature"], ["params_hash", "scope", "run_key", "computed_at"])


def targets_of_run(conn: Connection, run_key: str) -> set[str]:
    """Entries (active or removed) the incremental transform of ``run_key`` recomputed."""
    query = select(tgt_phonebook.c.contact_key).where(tgt_phonebook.c.run_key == run_key)
    return {key for (key,) in conn.execute(query)}
