"""Read and write helpers for the phonebook tables: ``stg_contacts``, ``phonebook_map``, ``tgt_phonebook``.

Like :mod:`m365_3cx.staging.bulk`, every function takes an open connection and never
commits: the caller owns the transaction, so a page round's rows and the delta links
it produced commit together. All timestamps are aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any, Final

from sqlalchemy import String, Text, and_, any_, bindparam, cast, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from m365_3cx.staging.boundary import CONTACT_PROPERTY_COLUMNS
from m365_3cx.staging.bulk import _chunks, upsert
from m365_3cx.staging.schema import delta_state, phonebook_map, stg_contacts, stg_users, tgt_phonebook
from m365_3cx.staging.users import MergeCounts

__all__ = [
    "CONTACT_SOURCE_COLUMNS",
    "GRAPH_CONTACT_SELECT",
    "apply_snapshot",
    "clear_contact_links",
    "contact_resource",
    "contact_row_from_graph",
    "eligible_user_count",
    "entry_currents",
    "fill_fingerprints",
    "forget_entries",
    "load_entries",
    "managed_present_count",
    "mark_contacts_deleted",
    "mark_deleted_by_owner",
    "mark_missing_contacts_deleted",
    "mark_missing_in_streams",
    "mark_streams_gone",
    "merge_contacts",
    "missing_fingerprints",
    "patch_phonebook_targets",
    "pending_entry_count",
    "plan_candidates",
    "purge_by_owner",
    "purge_contacts",
    "record_pending",
    "record_pending_many",
    "replace_phonebook_targets",
    "set_entry_facts",
    "set_entry_id",
    "set_entry_ids",
    "shard_descriptors",
    "shard_users",
    "staged_owners",
    "staged_streams",
]

#: Graph ``$select`` for contacts (delta rounds; ``id`` is always returned).
GRAPH_CONTACT_SELECT: Final[tuple[str, ...]] = (
    "id", "displayName", "givenName", "middleName", "surname", "fileAs", "companyName", "department",
    "jobTitle", "mobilePhone", "businessPhones", "homePhones", "emailAddresses", "categories",
    "changeKey", "parentFolderId",
)

_CONTACT_FIELDS: Final[Mapping[str, str]] = CONTACT_PROPERTY_COLUMNS

#: stg_contacts columns that come from Graph (and feed ``row_hash``).
CONTACT_SOURCE_COLUMNS: Final[tuple[str, ...]] = (
    "source", "folder_id", *_CONTACT_FIELDS.values(), "business_phones", "home_phones", "email_addresses",
    "categories",
)

_RESOURCE_LIMIT: Final = 128


def contact_resource(user_id: str, folder_id: str | None) -> str:
    """The ``delta_state`` resource of one contact stream: ``contacts:{user_id}:{folder or 'default'}``.

    Folder ids longer than the column allows are replaced by ``h<sha256 prefix>``.

    :param user_id: the mailbox owner's Graph id.
    :param folder_id: the contact folder id, or ``None`` for the default folder.
    :return: at most 128 characters.
    """
    resource = f"contacts:{user_id}:{folder_id or 'default'}"
    if len(resource) <= _RESOURCE_LIMIT:
        return resource
    digest = hashlib.sha256((folder_id or "").encode("utf-8")).hexdigest()[:40]
    return f"contacts:{user_id}:h{digest}"[:_RESOURCE_LIMIT]


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(v) for v in value if isinstance(v, str) and v.strip()]


def _addresses(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    found: list[str] = []
    for item in value:
        address = item.get("address") if isinstance(item, Mapping) else item
        if isinstance(address, str) and address.strip():
            found.append(address.strip())
    return found


#: What ``json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)`` uses,
#: made once (``json.dumps`` with options builds an encoder per call).
_HASH_JSON: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
#: ``"column":`` of each hashed column, in ``sort_keys`` order.
_HASH_KEYS: Final = tuple((col, encode_basestring(col) + ":") for col in sorted(set(CONTACT_SOURCE_COLUMNS)))


def _hash_payload(row: Mapping[str, Any]) -> str:
    """The JSON :data:`_HASH_JSON` makes of the source columns, written out directly for the values a row
    holds (text, ``None``, lists of text); anything else goes through the encoder. Same text either way."""
    parts: list[str] = []
    for col, key in _HASH_KEYS:
        value = row.get(col)
        kind = type(value)
        if value is None:
            parts.append(key + "null")
        elif kind is str:
            parts.append(key + encode_basestring(value))
        elif kind is list and all(type(v) is str for v in value):
            parts.append(key + "[" + ",".join(map(encode_basestring, value)) + "]")
        else:
            return _HASH_JSON.encode({c: row.get(c) for c in CONTACT_SOURCE_COLUMNS})
    return "{" + ",".join(parts) + "}"


def _row_hash(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(_hash_payload(row).encode("utf-8")).hexdigest()


def contact_row_from_graph(item: Mapping[str, Any], owner_id: str, folder_id: str | None,
                           source: str = "personal") -> dict[str, Any]:
    """Map one Graph contact to ``stg_contacts`` source columns (plus keys, ``change_key``, ``row_hash``).

    Only e-mail *addresses* are kept (no display names); missing collections become ``[]``.

    :param item: the contact as Graph returns it (``GRAPH_CONTACT_SELECT``).
    :param owner_id: the mailbox owner's Graph id (``org`` for organisational contacts).
    :param folder_id: the folder the stream reads, ``None`` for the default folder.
    :param source: ``personal``, ``shared`` or ``org``.
    :raises ValueError: the item has no ``id``.
    """
    contact_id = item.get("id")
    if not contact_id:
        raise ValueError("Graph contact without id")
    row: dict[str, Any] = {"owner_id": owner_id, "contact_id": str(contact_id), "source": source,
                           "folder_id": folder_id}
    for prop, col in _CONTACT_FIELDS.items():
        value = item.get(prop)
        row[col] = value if isinstance(value, str) and value.strip() else None
    row["business_phones"] = _strings(item.get("businessPhones"))
    row["home_phones"] = _strings(item.get("homePhones"))
    row["email_addresses"] = _addresses(item.get("emailAddresses"))
    row["categories"] = _strings(item.get("categories"))
    change_key = item.get("changeKey")
    row["change_key"] = str(change_key)[:256] if change_key else None
    row["row_hash"] = _row_hash(row)
    return row


def merge_contacts(conn: Connection, rows: Iterable[Mapping[str, Any]], run_key: str, now: dt.datetime) -> MergeCounts:
    """Upsert contacts that are new, changed (``row_hash``) or come back after a delete.

    Unchanged rows are not rewritten. When a contact appears twice the last row wins.

    :param rows: rows from :func:`contact_row_from_graph`.
    :returns: :class:`~m365_3cx.staging.users.MergeCounts`.
    :raises ValueError: naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("naive datetime; pass an aware UTC datetime")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        latest[(str(row["owner_id"]), str(row["contact_id"]))] = dict(row)
    if not latest:
        return MergeCounts()
    existing = _staged_hashes(conn, list(latest))
    inserted = updated = unchanged = 0
    to_write: list[dict[str, Any]] = []
    for key, row in latest.items():
        before = existing.get(key)
        if before is None:
            inserted += 1
        elif before[0] != row["row_hash"] or before[1]:
            updated += 1
        else:
            unchanged += 1
            continue
        to_write.append({**row, "deleted": False, "deleted_at": None, "first_seen_at": now, "updated_at": now,
                         "last_run_key": run_key})
    update_cols = [c for c in (to_write[0] if to_write else {}) if c not in ("owner_id", "contact_id",
                                                                              "first_seen_at")]
    upsert(conn, stg_contacts, to_write, ["owner_id", "contact_id"], update_cols)
    return MergeCounts(inserted=inserted, updated=updated, unchanged=unchanged)


def _staged_hashes(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, bool]]:
    """``(owner_id, contact_id) -> (row_hash, deleted)`` of the staged rows among ``keys``.

    PostgreSQL: per 5,000 keys one query ``owner_id = ANY(owners) AND contact_id = ANY(ids)`` (two array
    parameters; rows of other pairs the two lists allow are left out here); elsewhere a
    ``(owner_id, contact_id) IN (...)`` list per 500 keys.
    """
    columns = (stg_contacts.c.owner_id, stg_contacts.c.contact_id, stg_contacts.c.row_hash, stg_contacts.c.deleted)
    existing: dict[tuple[str, str], tuple[str, bool]] = {}
    if conn.dialect.name == "postgresql":
        wanted = set(keys)
        for start in range(0, len(keys), 5_000):
            chunk = keys[start:start + 5_000]
            owners = sorted({owner for owner, _ in chunk})
            ids = sorted({cid for _, cid in chunk})
            query = select(*columns).where(
                stg_contacts.c.owner_id == any_(bindparam("owners", owners, type_=ARRAY(String))),
                stg_contacts.c.contact_id == any_(bindparam("ids", ids, type_=ARRAY(String))))
            for owner, cid, row_hash, deleted in conn.execute(query):
                if (owner, cid) in wanted:
                    existing[(owner, cid)] = (row_hash, bool(deleted))
        return existing
    pair = tuple_(stg_contacts.c.owner_id, stg_contacts.c.contact_id)
    for start in range(0, len(keys), 500):
        query = select(*columns).where(pair.in_(keys[start:start + 500]))
        for owner, cid, row_hash, deleted in conn.execute(query):
            existing[(owner, cid)] = (row_hash, bool(deleted))
    return existing


def _soft_delete(run_key: str, now: dt.datetime) -> dict[str, Any]:
    return {"deleted": True, "deleted_at": now, "updated_at": now, "last_run_key": run_key}


def mark_contacts_deleted(conn: Connection, owner_id: str, contact_ids: Iterable[str], run_key: str,
                          now: dt.datetime) -> int:
    """Soft-delete contacts of one owner (Graph ``@removed``); unknown or already deleted ones are skipped.

    :returns: rows that became deleted.
    """
    return mark_deleted_by_owner(conn, {owner_id: contact_ids}, run_key, now)


def mark_deleted_by_owner(conn: Connection, ids_by_owner: Mapping[str, Iterable[str]], run_key: str,
                          now: dt.datetime) -> int:
    """:func:`mark_contacts_deleted` for many owners at once (one statement per 500 contacts).

    :returns: rows that became deleted.
    """
    count = 0
    for batch in _owner_pairs(ids_by_owner):
        result = conn.execute(
            update(stg_contacts)
            .where(tuple_(stg_contacts.c.owner_id, stg_contacts.c.contact_id).in_(batch),
                   stg_contacts.c.deleted.is_(False))
            .values(**_soft_delete(run_key, now))
        )
        count += result.rowcount
    return count


def purge_contacts(conn: Connection, owner_id: str, contact_ids: Iterable[str]) -> int:
    """Delete rows outright (contacts that now carry the exclusion category: keep none of their data).

    :returns: rows deleted.
    """
    return purge_by_owner(conn, {owner_id: contact_ids})


def purge_by_owner(conn: Connection, ids_by_owner: Mapping[str, Iterable[str]]) -> int:
    """:func:`purge_contacts` for many owners at once (one statement per 500 contacts).

    :returns: rows deleted.
    """
    count = 0
    for batch in _owner_pairs(ids_by_owner):
        result = conn.execute(delete(stg_contacts).where(
            tuple_(stg_contacts.c.owner_id, stg_contacts.c.contact_id).in_(batch)))
        count += result.rowcount
    return count


def _owner_pairs(ids_by_owner: Mapping[str, Iterable[str]]) -> Iterator[Sequence[tuple[str, str]]]:
    """``(owner, contact)`` pairs, each once, in batches of :data:`~m365_3cx.staging.bulk.BATCH_SIZE`."""
    return _chunks(sorted({(owner, str(cid)) for owner, ids in ids_by_owner.items() for cid in ids}))


def _folder_clause(folder_id: str | None) -> Any:
    return stg_contacts.c.folder_id.is_(None) if folder_id is None else stg_contacts.c.folder_id == folder_id


def mark_missing_contacts_deleted(conn: Connection, owner_id: str, folder_id: str | None, seen: set[str],
                                  run_key: str, now: dt.datetime) -> int:
    """After a full round of one stream: soft-delete its staged contacts the round did not return.

    :returns: rows that became deleted.
    """
    query = select(stg_contacts.c.contact_id).where(
        stg_contacts.c.owner_id == owner_id, _folder_clause(folder_id), stg_contacts.c.deleted.is_(False))
    missing = [cid for (cid,) in conn.execute(query) if cid not in seen]
    return mark_contacts_deleted(conn, owner_id, missing, run_key, now)


def mark_missing_in_streams(conn: Connection, rounds: Sequence[tuple[str, str | None, set[str]]], run_key: str,
                            now: dt.datetime) -> int:
    """:func:`mark_missing_contacts_deleted` for several streams that finished a full round at once.

    :param rounds: ``(owner_id, folder_id, ids the round returned)`` per stream.
    :returns: rows that became deleted.
    """
    if not rounds:
        return 0
    seen = {(owner, folder): ids for owner, folder, ids in rounds}
    owners = sorted({owner for owner, _, _ in rounds})
    missing: list[tuple[str, str]] = []
    for start in range(0, len(owners), 500):
        query = select(stg_contacts.c.owner_id, stg_contacts.c.folder_id, stg_contacts.c.contact_id).where(
            stg_contacts.c.owner_id.in_(owners[start:start + 500]), stg_contacts.c.deleted.is_(False))
        for owner, folder, cid in conn.execute(query):
            ids = seen.get((owner, folder))
            if ids is not None and cid not in ids:
                missing.append((owner, cid))
    count = 0
    pair = tuple_(stg_contacts.c.owner_id, stg_contacts.c.contact_id)
    for start in range(0, len(missing), 500):
        count += conn.execute(
            update(stg_contacts).where(pair.in_(missing[start:start + 500]), stg_contacts.c.deleted.is_(False))
            .values(**_soft_delete(run_key, now))
        ).rowcount
    return count


def staged_streams(conn: Connection, owner_ids: Sequence[str],
                   source: str = "personal") -> set[tuple[str, str | None]]:
    """(owner, folder) pairs that have live staged contacts of ``source``."""
    found: set[tuple[str, str | None]] = set()
    for start in range(0, len(owner_ids), 500):
        query = (select(stg_contacts.c.owner_id, stg_contacts.c.folder_id)
                 .where(stg_contacts.c.owner_id.in_(list(owner_ids[start:start + 500])),
                        stg_contacts.c.deleted.is_(False), stg_contacts.c.source == source)
                 .distinct())
        found.update((owner, folder) for owner, folder in conn.execute(query))
    return found


def staged_owners(conn: Connection, source: str) -> set[str]:
    """Owners with live staged contacts of ``source`` (e.g. every shared mailbox still staged)."""
    query = (select(stg_contacts.c.owner_id).where(stg_contacts.c.source == source, stg_contacts.c.deleted.is_(False))
             .distinct())
    return {owner for (owner,) in conn.execute(query)}


def mark_streams_gone(conn: Connection, owner_id: str, folder_ids: Iterable[str | None], run_key: str,
                      now: dt.datetime) -> int:
    """Soft-delete the contacts of streams no longer read (folder removed, setting changed) and drop their links.

    :returns: rows that became deleted.
    """
    count = 0
    for folder_id in folder_ids:
        result = conn.execute(
            update(stg_contacts)
            .where(stg_contacts.c.owner_id == owner_id, _folder_clause(folder_id), stg_contacts.c.deleted.is_(False))
            .values(**_soft_delete(run_key, now))
        )
        count += result.rowcount
        conn.execute(delete(delta_state).where(delta_state.c.resource == contact_resource(owner_id, folder_id)))
    return count


def clear_contact_links(conn: Connection, owner_id: str) -> int:
    """Forget every contact delta link of one owner.

    :returns: links deleted.
    """
    prefix = f"contacts:{owner_id}:"
    result = conn.execute(delete(delta_state).where(
        func.substr(delta_state.c.resource, 1, len(prefix)) == prefix))
    return result.rowcount


# ------------------------------------------------------------------------- shards of owners


def _eligible(include_guests: bool = False) -> Any:
    clause = and_(stg_users.c.in_scope.is_(True), stg_users.c.deleted.is_(False), stg_users.c.mail.is_not(None),
                  stg_users.c.user_principal_name.is_not(None))
    if not include_guests:
        clause = and_(clause, func.coalesce(stg_users.c.user_type, "Member") != "Guest")
    return clause


def eligible_user_count(conn: Connection, include_guests: bool = False) -> int:
    """In-scope, not deleted users with a mailbox address (whose contacts are read)."""
    query = select(func.count()).select_from(stg_users).where(_eligible(include_guests))
    return int(conn.execute(query).scalar_one())


def shard_descriptors(conn: Connection, shard_size: int, include_guests: bool = False) -> list[dict[str, Any]]:
    """Cut the eligible users, ordered by UPN (database collation), into shards.

    :param shard_size: users per shard (>= 1).
    :param include_guests: guests count too (``settings.scope.include_guests``).
    :return: ``[{"shard": i, "of": n, "first": upn, "last": upn}, ...]``; one shard with
        ``first``/``last`` ``None`` when nobody is eligible (so downstream steps still run).
    :raises ValueError: ``shard_size`` < 1.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    upns = [u for (u,) in conn.execute(
        select(stg_users.c.user_principal_name).where(_eligible(include_guests))
        .order_by(stg_users.c.user_principal_name))]
    if not upns:
        return [{"shard": 1, "of": 1, "first": None, "last": None}]
    chunks = [upns[i:i + shard_size] for i in range(0, len(upns), shard_size)]
    return [{"shard": i, "of": len(chunks), "first": chunk[0], "last": chunk[-1]}
            for i, chunk in enumerate(chunks, start=1)]


def shard_users(conn: Connection, first: str | None, last: str | None,
                include_guests: bool = False) -> list[dict[str, Any]]:
    """The eligible users of one shard (UPN between ``first`` and ``last``, inclusive), by UPN.

    :return: dicts with ``user_id``, ``user_principal_name``; empty for an empty shard.
    """
    if first is None or last is None:
        return []
    upn = stg_users.c.user_principal_name
    query = select(stg_users.c.user_id, upn).where(_eligible(include_guests), upn >= first, upn <= last).order_by(upn)
    return [{"user_id": uid, "user_principal_name": name} for uid, name in conn.execute(query)]


def users_by_ids(conn: Connection, user_ids: Iterable[str], include_guests: bool = False) -> list[dict[str, Any]]:
    """The eligible users among ``user_ids`` (an on-demand run's), by UPN; same shape as :func:`shard_users`."""
    ids = sorted(set(user_ids))
    if not ids:
        return []
    upn = stg_users.c.user_principal_name
    query = (select(stg_users.c.user_id, upn).where(_eligible(include_guests), stg_users.c.user_id.in_(ids))
             .order_by(upn))
    return [{"user_id": uid, "user_principal_name": name} for uid, name in conn.execute(query)]


# ------------------------------------------------------------------------- tgt_phonebook / phonebook_map


def replace_phonebook_targets(conn: Connection, rows: Iterable[Mapping[str, Any]], run_key: str,
                              now: dt.datetime) -> int:
    """Make ``tgt_phonebook`` hold exactly the desired entries, writing only the difference.

    Entries no longer desired are deleted, new or changed ones upserted (``run_key`` and
    ``computed_at`` name the run that last changed an entry); unchanged entries are not rewritten,
    so a run whose contacts did not change writes nothing here.

    :param rows: records with the ``TARGET_COLUMNS`` of :mod:`m365_3cx.transform.phonebook`
        (``fields_hash`` is computed here).
    :returns: rows written (inserted or changed).
    """
    desired = {str(row["contact_key"]): row for row in _target_rows(rows)}
    columns = sorted({col for row in desired.values() for col in row} - {"contact_key"})
    stored: dict[str, tuple[Any, ...]] = {}
    if columns:
        query = select(tgt_phonebook.c.contact_key, *(tgt_phonebook.c[col] for col in columns))
        stored = {key: tuple(values) for key, *values in conn.execute(query)}
    else:
        stored = {key: () for (key,) in conn.execute(select(tgt_phonebook.c.contact_key))}
    gone = sorted(set(stored) - set(desired))
    for start in range(0, len(gone), 500):
        conn.execute(delete(tgt_phonebook).where(tgt_phonebook.c.contact_key.in_(gone[start:start + 500])))
    changed = [{**row, "run_key": run_key, "computed_at": now} for key, row in desired.items()
               if stored.get(key) != tuple(row.get(col) for col in columns)]
    return upsert(conn, tgt_phonebook, changed, ["contact_key"])


def patch_phonebook_targets(conn: Connection, rows: Iterable[Mapping[str, Any]], run_key: str,
                            now: dt.datetime) -> int:
    """Upsert the entries an incremental transform recomputed (``state`` ``removed`` for entries
    nobody feeds any more), every one stamped with ``run_key``: the delta plan diffs exactly these.

    :param rows: records with the ``TARGET_COLUMNS`` of :mod:`m365_3cx.transform.phonebook`
        (``fields_hash`` is computed here).
    :returns: rows written.
    """
    return upsert(conn, tgt_phonebook, [{**row, "run_key": run_key, "computed_at": now} for row in _target_rows(rows)],
                  ["contact_key"])


def _target_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``tgt_phonebook`` rows as they will be stored, each with the ``fields_hash`` of its managed fields
    (computed from the very values written, whatever hash a row came with; ``NULL`` for a row that
    leaves a managed column out, since an upsert would keep that column's stored value)."""
    from m365_3cx.staging.bulk import _clean_rows
    from m365_3cx.transform.phonebook import FIELD_COLUMNS, managed_fingerprint, target_fields

    cleaned = _clean_rows(tgt_phonebook, rows)
    return [{**row, "fields_hash": managed_fingerprint(target_fields(row))
             if all(col in row for col in FIELD_COLUMNS.values()) else None} for row in cleaned]


def record_pending(conn: Connection, contact_key: str, tag: str, run_key: str, now: dt.datetime) -> None:
    """Record an entry about to be created (``status=pending``) so a lost create can be re-linked by tag."""
    row = {"contact_key": contact_key, "tag": tag, "threecx_id": None, "status": "pending", "present": False,
           "current": None, "current_hash": None, "duplicate_ids": [], "created_at": now, "updated_at": now,
           "run_key": run_key}
    upsert(conn, phonebook_map, [row], ["contact_key"], ["tag", "status", "updated_at", "run_key"])


def record_pending_many(conn: Connection, entries: Sequence[tuple[str, str]], run_key: str,
                        now: dt.datetime) -> int:
    """:func:`record_pending` for a chunk of creates (``(contact_key, tag)`` pairs) in one upsert.

    :returns: rows written.
    """
    rows = [{"contact_key": key, "tag": tag, "threecx_id": None, "status": "pending", "present": False,
             "current": None, "current_hash": None, "duplicate_ids": [], "created_at": now, "updated_at": now,
             "run_key": run_key}
            for key, tag in entries]
    return upsert(conn, phonebook_map, rows, ["contact_key"], ["tag", "status", "updated_at", "run_key"])


def set_entry_ids(conn: Connection, ids: Mapping[str, int], now: dt.datetime) -> int:
    """:func:`set_entry_id` for many entries (``{contact_key: threecx_id}``) in one executemany.

    :returns: rows sent.
    """
    if not ids:
        return 0
    stmt = (update(phonebook_map).where(phonebook_map.c.contact_key == bindparam("b_key"))
            .values(threecx_id=bindparam("b_id"), status="active", updated_at=now))
    data = [{"b_key": key, "b_id": int(tid)} for key, tid in sorted(ids.items())]
    for start in range(0, len(data), 500):
        conn.execute(stmt, data[start:start + 500])
    return len(data)


def set_entry_id(conn: Connection, contact_key: str, threecx_id: int, now: dt.datetime) -> bool:
    """Store the 3CX id of an entry after a successful create (``status=active``).

    :returns: ``True`` when the entry exists.
    """
    result = conn.execute(update(phonebook_map).where(phonebook_map.c.contact_key == contact_key)
                          .values(threecx_id=threecx_id, status="active", updated_at=now))
    return result.rowcount > 0


def set_entry_facts(conn: Connection, facts: Mapping[str, tuple[int, Mapping[str, Any] | None]],
                    now: dt.datetime) -> int:
    """Record what 3CX holds for entries just written or verified (``{contact_key: (threecx_id, current)}``):
    present, ``status=active``, the id and the managed fields as they now are, with their
    ``current_hash`` (one executemany).

    Keeping ``current`` true after each write is what lets a delta run plan without re-reading the
    whole phonebook.

    :returns: rows sent.
    """
    from m365_3cx.transform.phonebook import managed_fingerprint

    if not facts:
        return 0
    stmt = (update(phonebook_map).where(phonebook_map.c.contact_key == bindparam("b_key"))
            .values(threecx_id=bindparam("b_id"), current=bindparam("b_current"), current_hash=bindparam("b_hash"),
                    present=True, status="active", updated_at=now))
    data = [{"b_key": key, "b_id": int(tid), "b_current": dict(current) if current is not None else None,
             "b_hash": managed_fingerprint(current)}
            for key, (tid, current) in sorted(facts.items())]
    for start in range(0, len(data), 500):
        conn.execute(stmt, data[start:start + 500])
    return len(data)


def entry_currents(conn: Connection, keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """``current`` of the given map entries (one query per 500 keys)."""
    wanted = sorted(set(keys))
    found: dict[str, dict[str, Any] | None] = {}
    for start in range(0, len(wanted), 500):
        query = select(phonebook_map.c.contact_key, phonebook_map.c.current).where(
            phonebook_map.c.contact_key.in_(wanted[start:start + 500]))
        found.update((key, dict(current) if current else None) for key, current in conn.execute(query))
    return found


def forget_entries(conn: Connection, keys: Iterable[str]) -> int:
    """Drop map entries (deleted in 3CX, or gone and no longer desired).

    :returns: rows deleted.
    """
    ids = sorted(set(keys))
    count = 0
    for start in range(0, len(ids), 500):
        count += conn.execute(delete(phonebook_map).where(
            phonebook_map.c.contact_key.in_(ids[start:start + 500]))).rowcount
    return count


def apply_snapshot(conn: Connection, matches: Iterable[Any], run_key: str, now: dt.datetime) -> int:
    """Write what the 3CX read says about every map entry (present, current fields, duplicates, re-links).

    Set-based: one statement stamps ``read_at``/``run_key`` on every entry, and only the entries whose
    facts changed are rewritten (executemany, pages of 500), so a snapshot that finds everything as
    it was costs two statements, not one per entry. The fields read are compared through their
    fingerprint (``current_hash``), never by decoding the stored ``current``; an entry from before
    the fingerprint (``current_hash`` NULL) is rewritten once.

    :param matches: :class:`~m365_3cx.reconcile.phonebook.SnapshotMatch` objects.
    :returns: entries re-linked by tag.
    """
    from m365_3cx.transform.phonebook import managed_fingerprint

    m = phonebook_map.c
    stored = {key: (tid, status, bool(present), current_hash, bool(no_current), list(dups or []))
              for key, tid, status, present, current_hash, no_current, dups in conn.execute(select(
                  m.contact_key, m.threecx_id, m.status, m.present, m.current_hash, m.current.is_(None),
                  m.duplicate_ids))}
    relinked = 0
    present_rows: list[dict[str, Any]] = []
    absent_rows: list[dict[str, Any]] = []
    for match in matches:
        relinked += int(match.relinked)
        before = stored.get(match.contact_key)
        if before is None:
            continue
        dups = list(match.duplicate_ids)
        if match.present:
            fingerprint = managed_fingerprint(match.current)
            if fingerprint is not None and before == (match.threecx_id, "active", True, fingerprint, False, dups):
                continue
            present_rows.append({"b_key": match.contact_key, "b_id": match.threecx_id, "b_current": match.current,
                                 "b_hash": fingerprint, "b_dups": dups})
        elif before[2:] != (False, None, True, dups):
            absent_rows.append({"b_key": match.contact_key, "b_dups": dups})
    conn.execute(update(phonebook_map).values(read_at=now, run_key=run_key))
    key = m.contact_key == bindparam("b_key")
    statements = (
        (update(phonebook_map).where(key).values(present=True, threecx_id=bindparam("b_id"), status="active",
                                                 current=bindparam("b_current"), current_hash=bindparam("b_hash"),
                                                 duplicate_ids=bindparam("b_dups")),
         present_rows),
        (update(phonebook_map).where(key).values(present=False, current=None, current_hash=None,
                                                 duplicate_ids=bindparam("b_dups")),
         absent_rows),
    )
    for stmt, rows in statements:
        for start in range(0, len(rows), 500):
            conn.execute(stmt, rows[start:start + 500])
    return relinked


def _settled(t: Any, m: Any) -> Any:
    """The entries the phonebook diff provably leaves alone: desired (``active``), present in 3CX with an
    id, no duplicates, and the same fingerprint of the managed fields on both sides (neither NULL)."""
    return and_(m.contact_key == t.contact_key, t.state == "active", m.present.is_(True),
                m.threecx_id.is_not(None), t.fields_hash.is_not(None), t.fields_hash == m.current_hash,
                or_(m.duplicate_ids.is_(None), cast(m.duplicate_ids, Text) == "[]"))


def plan_candidates(conn: Connection, keys: Iterable[str] | None = None) -> tuple[Any, Any]:
    """The ``tgt_phonebook`` and ``phonebook_map`` rows that can make a difference to the phonebook plan.

    Everything but the *settled* entries (see :func:`_settled`): a key on one side only, a state other
    than ``active``, an entry not present or without a 3CX id, duplicates, a NULL fingerprint (rows
    from before schema version 3) or fingerprints that differ. A settled entry contributes nothing
    to the plan but one managed entry (count it with :func:`managed_present_count`), so diffing the
    candidates gives the plan of everything.

    :param keys: only these entries (a delta run's subset; read 500 keys per statement), else all.
    :return: ``(desired, mapping)`` frames, like :func:`~m365_3cx.staging.frames.load_frame`.
    """
    import pandas as pd

    from m365_3cx.staging.frames import load_frame

    t, m = tgt_phonebook.c, phonebook_map.c
    desired_where = ~exists().where(_settled(t, m)).correlate(tgt_phonebook)
    mapping_where = ~exists().where(_settled(t, m)).correlate(phonebook_map)
    if keys is None:
        return load_frame(conn, "tgt_phonebook", where=desired_where), \
            load_frame(conn, "phonebook_map", where=mapping_where)
    items = sorted(set(keys))
    chunks = [items[i:i + 500] for i in range(0, len(items), 500)] or [[]]
    frames = []
    for name, column, where in (("tgt_phonebook", t.contact_key, desired_where),
                                ("phonebook_map", m.contact_key, mapping_where)):
        parts = [load_frame(conn, name, where=and_(column.in_(chunk), where)) for chunk in chunks]
        parts = [p for p in parts if len(p)] or parts[:1]
        frames.append(pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0])
    return frames[0], frames[1]


def missing_fingerprints(desired: Any, mapping: Any) -> list[tuple[str, str, str]]:
    """The fingerprints rows read by :func:`plan_candidates` lack (rows from before schema version 3, or
    written without every managed column), computed from the values they store.

    :param desired: the ``tgt_phonebook`` candidates.
    :param mapping: the ``phonebook_map`` candidates (only rows with a ``current`` get one).
    :return: ``(table name, contact_key, fingerprint)`` triples for :func:`fill_fingerprints`.
    """
    from m365_3cx.transform.phonebook import managed_fingerprint, target_fields

    found: list[tuple[str, str, str]] = []
    for row in desired.to_dict("records") if len(desired) else []:
        if row.get("fields_hash") is None:
            found.append(("tgt_phonebook", row["contact_key"], str(managed_fingerprint(target_fields(row)))))
    for row in mapping.to_dict("records") if len(mapping) else []:
        if row.get("current_hash") is None and isinstance(row.get("current"), Mapping):
            found.append(("phonebook_map", row["contact_key"], str(managed_fingerprint(row["current"]))))
    return found


def fill_fingerprints(conn: Connection, missing: Sequence[tuple[str, str, str]]) -> int:
    """Store the fingerprints :func:`missing_fingerprints` computed, so the next plan can leave those
    entries out (an incremental transform may not rewrite a target row for days). A row whose
    fingerprint is no longer NULL (rewritten meanwhile) is left as it is.

    :returns: rows sent.
    """
    t, m = tgt_phonebook.c, phonebook_map.c
    statements = {
        "tgt_phonebook": update(tgt_phonebook).where(t.contact_key == bindparam("b_key"), t.fields_hash.is_(None))
        .values(fields_hash=bindparam("b_hash")),
        "phonebook_map": update(phonebook_map).where(m.contact_key == bindparam("b_key"), m.current_hash.is_(None))
        .values(current_hash=bindparam("b_hash")),
    }
    for name, stmt in statements.items():
        data = [{"b_key": key, "b_hash": value} for table_name, key, value in missing if table_name == name]
        for start in range(0, len(data), 500):
            conn.execute(stmt, data[start:start + 500])
    return len(missing)


def load_entries(conn: Connection, table_name: str, keys: Iterable[str]) -> Any:
    """Rows of ``tgt_phonebook`` or ``phonebook_map`` for these entries, as one DataFrame
    (read 500 keys per statement)."""
    import pandas as pd

    from m365_3cx.staging.frames import load_frame
    from m365_3cx.staging.schema import table

    column = table(table_name).c.contact_key
    items = sorted(set(keys))
    frames = [load_frame(conn, table_name, where=column.in_(items[i:i + 500])) for i in range(0, len(items), 500)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return load_frame(conn, table_name, where=column.in_([]))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def managed_present_count(conn: Connection) -> int:
    """Managed entries found in the last 3CX snapshot (the mass-removal guard's base)."""
    query = select(func.count()).select_from(phonebook_map).where(
        phonebook_map.c.present.is_(True), phonebook_map.c.threecx_id.is_not(None))
    return int(conn.execute(query).scalar_one())


def pending_entry_count(conn: Connection) -> int:
    """Map entries whose create has not been confirmed yet (``status=pending``)."""
    query = select(func.count()).select_from(phonebook_map).where(phonebook_map.c.status == "pending")
    return int(conn.execute(query).scalar_one())
