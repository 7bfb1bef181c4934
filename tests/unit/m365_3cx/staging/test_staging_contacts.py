from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update

from m365_3cx.reconcile.phonebook import SnapshotMatch
from m365_3cx.staging import contacts as crepo
from m365_3cx.staging.frames import load_frame
from m365_3cx.staging.schema import delta_state, phonebook_map, stg_contacts, tgt_phonebook
from m365_3cx.staging.state import DeltaStateStore
from m365_3cx.staging.users import merge_users, set_scope, user_row_from_graph

NOW = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)


def graph_contact(cid: str, **kw: Any) -> dict[str, Any]:
    item = {"id": cid, "displayName": "Ann Lee", "givenName": "Ann", "surname": "Lee", "mobilePhone": "+1 650",
            "businessPhones": ["+1 1", ""], "homePhones": [], "categories": ["Work"], "changeKey": "ck1",
            "emailAddresses": [{"name": "Ann", "address": "ann@x.example"}, {"name": "no address"}]}
    item.update(kw)
    return item


def test_contact_row_keeps_addresses_only_and_hashes_source_fields() -> None:
    row = crepo.contact_row_from_graph(graph_contact("c1"), "u1", None)
    assert row["email_addresses"] == ["ann@x.example"] and row["business_phones"] == ["+1 1"]
    assert row["owner_id"] == "u1" and row["folder_id"] is None and row["source"] == "personal"
    assert row["change_key"] == "ck1" and len(row["row_hash"]) == 64
    other = crepo.contact_row_from_graph(graph_contact("c1", changeKey="ck2"), "u1", None)
    assert other["row_hash"] == row["row_hash"]  # change key alone is no source change
    with pytest.raises(ValueError):
        crepo.contact_row_from_graph({"displayName": "x"}, "u1", None)


def test_contact_resource_fits_the_column() -> None:
    assert crepo.contact_resource("u1", None) == "contacts:u1:default"
    assert crepo.contact_resource("u1", "F1") == "contacts:u1:F1"
    long_id = "AAMkA" + "x" * 200
    resource = crepo.contact_resource("0" * 36, long_id)
    assert len(resource) <= 128 and resource == crepo.contact_resource("0" * 36, long_id)
    assert resource != crepo.contact_resource("0" * 36, long_id + "y")


def test_merge_is_idempotent_and_deletes_are_soft(engine: Engine) -> None:
    rows = [crepo.contact_row_from_graph(graph_contact(f"c{i}"), "u1", "F") for i in range(3)]
    with engine.begin() as conn:
        first = crepo.merge_contacts(conn, rows, "r1", NOW)
        again = crepo.merge_contacts(conn, rows, "r2", NOW)
        changed = crepo.merge_contacts(conn, [crepo.contact_row_from_graph(graph_contact("c0", jobTitle="CTO"),
                                                                           "u1", "F")], "r3", NOW)
        gone = crepo.mark_missing_contacts_deleted(conn, "u1", "F", {"c0", "c1"}, "r4", NOW)
        twice = crepo.mark_contacts_deleted(conn, "u1", ["c2", "nope"], "r5", NOW)
        back = crepo.merge_contacts(conn, rows[2:], "r6", NOW)
        purged = crepo.purge_contacts(conn, "u1", ["c1"])
        left = {r.contact_id: r.deleted for r in conn.execute(select(stg_contacts))}
    assert (first.inserted, again.unchanged, changed.updated) == (3, 3, 1)
    assert (gone, twice, back.updated, purged) == (1, 0, 1, 1)
    assert left == {"c0": False, "c2": False}


def test_deletes_and_purges_of_many_owners_touch_only_the_named_owner_contact_pairs(engine: Engine) -> None:
    rows = [crepo.contact_row_from_graph(graph_contact(f"c{i}"), owner, None)
            for owner in ("u1", "u2", "u3") for i in range(700)]  # > one 500-pair statement
    with engine.begin() as conn:
        crepo.merge_contacts(conn, rows, "r1", NOW)
        deleted = crepo.mark_deleted_by_owner(conn, {"u1": [f"c{i}" for i in range(600)], "u2": ["c5", "c5", "nope"]},
                                              "r2", NOW)
        again = crepo.mark_deleted_by_owner(conn, {"u1": ["c0"]}, "r3", NOW)
        purged = crepo.purge_by_owner(conn, {"u2": ["c6"], "u3": [f"c{i}" for i in range(650)]})
        state = {(r.owner_id, r.contact_id): r.deleted for r in conn.execute(select(stg_contacts))}
    assert (deleted, again, purged) == (601, 0, 651)
    assert sum(state.values()) == 601 and state[("u1", "c600")] is False and state[("u2", "c5")] is True
    assert ("u2", "c6") not in state and ("u1", "c6") in state and ("u3", "c650") in state
    assert len(state) == 3 * 700 - 651


def test_streams_gone_lose_their_contacts_and_links(engine: Engine) -> None:
    store = DeltaStateStore()
    with engine.begin() as conn:
        crepo.merge_contacts(conn, [crepo.contact_row_from_graph(graph_contact("a"), "u1", None),
                                    crepo.contact_row_from_graph(graph_contact("b"), "u1", "F")], "r", NOW)
        store.save(conn, crepo.contact_resource("u1", "F"), "https://g/delta?$deltatoken=1", "r", now=NOW)
        store.save(conn, crepo.contact_resource("u1", None), "https://g/delta?$deltatoken=2", "r", now=NOW)
        assert crepo.staged_streams(conn, ["u1"]) == {("u1", None), ("u1", "F")}
        assert crepo.mark_streams_gone(conn, "u1", ["F"], "r2", NOW) == 1
        assert crepo.staged_streams(conn, ["u1"]) == {("u1", None)}
        assert conn.execute(select(delta_state.c.resource)).scalars().all() == ["contacts:u1:default"]
        assert crepo.clear_contact_links(conn, "u1") == 1


def _user(uid: str, upn: str, **kw: Any) -> dict[str, Any]:
    row = user_row_from_graph({"id": uid, "userPrincipalName": upn, "mail": upn, "userType": "Member", **kw})
    return row


def test_shards_cut_eligible_users_by_upn(engine: Engine) -> None:
    users = [_user(f"id{i}", f"user{i:02d}@x.example") for i in range(7)]
    users.append(_user("g", "guest@x.example", userType="Guest"))
    users.append(_user("n", "nomail@x.example", mail=None))
    with engine.begin() as conn:
        merge_users(conn, users, "r", NOW)
        set_scope(conn, None, "r", NOW)
        shards = crepo.shard_descriptors(conn, 3)
        with_guests = crepo.shard_descriptors(conn, 100, include_guests=True)
        members = [crepo.shard_users(conn, s["first"], s["last"]) for s in shards]
    assert [(s["shard"], s["of"]) for s in shards] == [(1, 3), (2, 3), (3, 3)]
    assert shards[0]["first"] == "user00@x.example" and shards[-1]["last"] == "user06@x.example"
    assert [len(m) for m in members] == [3, 3, 1]
    assert with_guests[0]["first"] == "guest@x.example"


def test_no_eligible_user_gives_one_empty_shard(engine: Engine) -> None:
    with engine.connect() as conn:
        assert crepo.shard_descriptors(conn, 200) == [{"shard": 1, "of": 1, "first": None, "last": None}]
        assert crepo.shard_users(conn, None, None) == []


def test_map_pending_snapshot_and_forget(engine: Engine) -> None:
    with engine.begin() as conn:
        crepo.record_pending(conn, "k1", "m365-sync:k1", "r", NOW)
        crepo.record_pending(conn, "k2", "m365-sync:k2", "r", NOW)
        assert crepo.set_entry_id(conn, "k1", 11, NOW)
        relinked = crepo.apply_snapshot(conn, [
            SnapshotMatch("k1", 11, True, {"FirstName": "Ann"}, [12]),
            SnapshotMatch("k2", 13, True, {"FirstName": "Bo"}, [], relinked=True),
        ], "r2", NOW)
        assert relinked == 1 and crepo.managed_present_count(conn) == 2
        rows = {r.contact_key: r for r in conn.execute(select(phonebook_map))}
        assert rows["k2"].threecx_id == 13 and rows["k2"].status == "active"
        assert rows["k1"].duplicate_ids == [12] and rows["k1"].current == {"FirstName": "Ann"}
        crepo.apply_snapshot(conn, [SnapshotMatch("k1", None, False, None)], "r3", NOW)
        assert crepo.managed_present_count(conn) == 1
        assert crepo.forget_entries(conn, ["k1", "k2"]) == 2


def test_targets_are_replaced(engine: Engine) -> None:
    row = {"contact_key": "k", "tag": "m365-sync:k", "first_name": "A", "owner_ids": ["u1"], "copies": 1,
           "state": "active"}
    with engine.begin() as conn:
        assert crepo.replace_phonebook_targets(
            conn, [row, {**row, "contact_key": "j", "tag": "m365-sync:j"}], "r", NOW) == 2
        assert crepo.replace_phonebook_targets(conn, [row], "r2", NOW) == 0  # only j goes; k is unchanged
        assert crepo.replace_phonebook_targets(conn, [{**row, "first_name": "B"}], "r3", NOW) == 1
        crepo.replace_phonebook_targets(conn, [row], "r4", NOW)
        frame = load_frame(conn, "tgt_phonebook")
    assert list(frame["contact_key"]) == ["k"] and frame.iloc[0]["owner_ids"] == ["u1"]


class _Statements:
    """Counts the statements an engine sends (one per round trip; an executemany page counts once)."""

    def __init__(self, engine: Engine) -> None:
        from sqlalchemy import event

        self.count = 0
        event.listen(engine, "before_cursor_execute", self._hit)

    def _hit(self, *_args: Any) -> None:
        self.count += 1


def test_snapshot_matching_is_set_based_and_rewrites_only_what_changed(engine: Engine) -> None:
    keys = [f"k{i:04d}" for i in range(1200)]
    with engine.begin() as conn:
        crepo.record_pending_many(conn, [(k, f"m365-sync:{k}") for k in keys], "r", NOW)
        crepo.set_entry_ids(conn, {k: i + 1 for i, k in enumerate(keys)}, NOW)
    matches = [SnapshotMatch(k, i + 1, True, {"FirstName": f"N{i}"}, []) for i, k in enumerate(keys)]
    statements = _Statements(engine)
    with engine.begin() as conn:
        crepo.apply_snapshot(conn, matches, "r2", NOW)
    first = statements.count
    assert first <= 8  # select + stamp + 3 pages of 500, not one UPDATE per entry
    statements.count = 0
    with engine.begin() as conn:
        crepo.apply_snapshot(conn, matches, "r3", NOW)
    assert statements.count <= 3  # nothing changed: read + stamp only
    gone = [*matches[:-1], SnapshotMatch(keys[-1], None, False, None)]
    with engine.begin() as conn:
        crepo.apply_snapshot(conn, gone, "r4", NOW)
        rows = {r.contact_key: r for r in conn.execute(select(phonebook_map))}
    assert rows[keys[0]].current == {"FirstName": "N0"} and rows[keys[0]].present
    assert not rows[keys[-1]].present and rows[keys[-1]].current is None and rows[keys[-1]].threecx_id == 1200


def test_entry_facts_and_pending_creates_in_bulk(engine: Engine) -> None:
    statements = _Statements(engine)
    with engine.begin() as conn:
        assert crepo.record_pending_many(conn, [("a", "m365-sync:a"), ("b", "m365-sync:b")], "r", NOW) == 2
        assert crepo.pending_entry_count(conn) == 2
        crepo.set_entry_facts(conn, {"a": (7, {"FirstName": "Ann"})}, NOW)
        assert crepo.entry_currents(conn, ["a", "b", "zz"]) == {"a": {"FirstName": "Ann"}, "b": None}
        assert crepo.pending_entry_count(conn) == 1
        row = conn.execute(select(phonebook_map).where(phonebook_map.c.contact_key == "a")).one()
    assert row.threecx_id == 7 and row.present and row.status == "active"
    assert statements.count <= 8


def test_page_round_merge_and_missing_marks_are_set_based(engine: Engine) -> None:
    rows = [crepo.contact_row_from_graph(graph_contact(f"c{o}-{i}"), f"u{o}", None) for o in range(20)
            for i in range(25)]
    statements = _Statements(engine)
    with engine.begin() as conn:
        merged = crepo.merge_contacts(conn, rows, "r", NOW)
    assert merged.inserted == 500 and statements.count <= 3
    statements.count = 0
    with engine.begin() as conn:
        again = crepo.merge_contacts(conn, rows, "r2", NOW)
        deleted = crepo.mark_missing_in_streams(
            conn, [(f"u{o}", None, {f"c{o}-{i}" for i in range(24)}) for o in range(20)], "r2", NOW)
    assert (again.unchanged, deleted) == (500, 20)
    assert statements.count <= 5
    with engine.connect() as conn:
        live = conn.execute(select(stg_contacts.c.contact_id).where(stg_contacts.c.deleted.is_(False))).all()
    assert len(live) == 480 and ("c3-24",) not in live


def test_merge_compares_only_the_given_owner_contact_pairs(engine: Engine) -> None:
    """Owners and contact ids of a page cross: (u1, c2) is staged and differs, but it is not on the page."""
    def row(owner: str, cid: str, **kw: Any) -> dict[str, Any]:
        return crepo.contact_row_from_graph(graph_contact(cid, **kw), owner, None)

    later = NOW + dt.timedelta(hours=1)
    with engine.begin() as conn:
        crepo.merge_contacts(conn, [row("u1", "c1"), row("u1", "c2"), row("u2", "c2"), row("u3", "c9")], "r1", NOW)
        merged = crepo.merge_contacts(conn, [row("u1", "c1"), row("u2", "c2", jobTitle="CTO"), row("u2", "c1"),
                                             *(row(f"u{i}", f"c{i}") for i in range(10, 5_100))], "r2", later)
        stamps = {(r.owner_id, r.contact_id): r.last_run_key for r in conn.execute(select(stg_contacts))}
    assert (merged.inserted, merged.updated, merged.unchanged) == (5_091, 1, 1)
    assert (stamps[("u1", "c1")], stamps[("u1", "c2")], stamps[("u2", "c2")], stamps[("u3", "c9")]) == \
        ("r1", "r1", "r2", "r1")


def test_delta_links_in_bulk(engine: Engine) -> None:
    store = DeltaStateStore()
    with engine.begin() as conn:
        assert store.save_many(conn, {"contacts:u1:default": "L1", "contacts:u2:default": "L2"}, "r", now=NOW) == 2
        assert store.get_many(conn, ["contacts:u1:default", "contacts:u3:default"]) == {"contacts:u1:default": "L1"}
        assert store.clear_many(conn, ["contacts:u1:default", "contacts:u9:default"]) == 1
        assert store.get(conn, "contacts:u2:default") == "L2"
        with pytest.raises(ValueError):
            store.save_many(conn, {"contacts:u1:default": ""}, "r")


# ------------------------------------------------------------------ plan candidates (fingerprints)

_POOLS: dict[str, list[str | None]] = {
    "first_name": ["Ann", "Bo", None], "last_name": ["Lee", "Chan", None], "company_name": ["Acme", None],
    "title": ["CTO", None], "department": ["Ops", None], "email": ["a@x.example", None],
    "phone_number": ["+16505550101", "+442079460018"], "mobile2": ["+16505550102", None],
    "business": ["+12125550100", None], "business2": [None], "home": ["+4930123456", None],
    "business_fax": [None], "other": [None, "+16505550199"],
}


def _folded(value: str | None, rng: random.Random) -> str | None:
    """A value the diff's normalisation folds back into ``value`` (surrounding blanks, blank for missing)."""
    if value is None:
        return rng.choice([None, "", "  "])
    return rng.choice([f" {value}", f"{value}\t", f"  {value} "])


def _random_phonebook(engine: Engine, rng: random.Random, n: int = 70) -> dict[str, set[str]]:
    """Random desired entries and map states written through the staging writers.

    :return: ``settled`` (keys the prefilter must leave out), ``desired`` and ``mapped`` keys.
    """
    from m365_3cx.transform.phonebook import FIELD_COLUMNS, MANAGED_FIELDS, TAG_PREFIX

    targets: list[dict[str, Any]] = []
    mapped: list[str] = []
    matches: list[SnapshotMatch] = []
    facts: dict[str, tuple[int, dict[str, Any] | None]] = {}
    no_id: list[str] = []
    not_present: list[str] = []
    clean: set[str] = set()  # desired active and read exactly as desired up to folding, no duplicates
    for i in range(n):
        key = f"k{i:03d}"
        row: dict[str, Any] = {col: rng.choice(_POOLS[col]) for col in FIELD_COLUMNS.values() if col != "tag"}
        row.update(contact_key=key, tag=f"{TAG_PREFIX}{key}", owner_ids=["u1"], copies=1)
        desired = rng.choices(["none", "active", "removed"], weights=[1, 6, 1])[0]
        if desired != "none":
            targets.append({**row, "state": desired})
        kind = rng.choices(["none", "same", "folded", "extra", "edited", "dropped", "absent", "pending", "dups",
                            "no_id", "not_present", "facts", "facts_none"],
                           weights=[1, 6, 4, 2, 3, 2, 2, 1, 1, 1, 1, 3, 1])[0]
        if kind == "none":
            continue
        mapped.append(key)
        current: dict[str, Any] = {f: row[FIELD_COLUMNS[f]] for f in MANAGED_FIELDS}
        if kind in ("folded", "facts"):
            current = {f: _folded(v, rng) if rng.random() < 0.5 else v for f, v in current.items()}
        elif kind == "extra":
            current["Notes"] = "an unmanaged field"
        elif kind == "edited":
            current[rng.choice(MANAGED_FIELDS)] = "hand edit"
        elif kind == "dropped":
            current.pop(rng.choice([f for f in MANAGED_FIELDS if current[f] is not None]))
        tid = 1000 + i
        if kind in ("same", "folded", "extra", "edited", "dropped", "no_id", "not_present"):
            matches.append(SnapshotMatch(key, tid, True, current, []))
        elif kind == "dups":
            matches.append(SnapshotMatch(key, tid, True, current, [5000 + i]))
        elif kind == "absent":
            matches.append(SnapshotMatch(key, None, False, None))
        elif kind in ("facts", "facts_none"):
            facts[key] = (tid, current if kind == "facts" else None)
        if kind == "no_id":
            no_id.append(key)
        if kind == "not_present":  # fields (and fingerprint) kept, but not seen: must be re-created
            not_present.append(key)
        if desired == "active" and kind in ("same", "folded", "extra", "facts"):
            clean.add(key)
    with engine.begin() as conn:
        crepo.replace_phonebook_targets(conn, targets, "r", NOW)
        crepo.record_pending_many(conn, [(k, f"m365-sync:{k}") for k in mapped], "r", NOW)
        crepo.apply_snapshot(conn, matches, "r", NOW)
        crepo.set_entry_facts(conn, facts, NOW)
        conn.execute(update(phonebook_map).where(phonebook_map.c.contact_key.in_(no_id)).values(threecx_id=None))
        conn.execute(update(phonebook_map).where(phonebook_map.c.contact_key.in_(not_present)).values(present=False))
        # Rows from before schema version 3 carry no fingerprint.
        old_targets = [t["contact_key"] for t in targets if rng.random() < 0.15]
        old_map = [k for k in mapped if rng.random() < 0.15]
        conn.execute(update(tgt_phonebook).where(tgt_phonebook.c.contact_key.in_(old_targets))
                     .values(fields_hash=None))
        conn.execute(update(phonebook_map).where(phonebook_map.c.contact_key.in_(old_map)).values(current_hash=None))
    return {"settled": clean - set(old_targets) - set(old_map), "clean": clean,
            "desired": {t["contact_key"] for t in targets}, "mapped": set(mapped)}


@pytest.mark.parametrize("seed", range(6))
def test_plan_of_the_candidates_equals_the_full_diff(engine: Engine, seed: int) -> None:
    """Hand edits, missing entries, duplicates, removed entries, NULL fingerprints, whitespace the diff folds:
    diffing only the candidates gives exactly the plan of every row, and settled entries are not read."""
    from m365_3cx.reconcile.phonebook import plan_phonebook

    rng = random.Random(seed)
    keys = _random_phonebook(engine, rng)
    assert keys["settled"]  # the prefilter has something to leave out
    with engine.connect() as conn:
        everything = plan_phonebook(load_frame(conn, "tgt_phonebook"), load_frame(conn, "phonebook_map"))
        desired, mapping = crepo.plan_candidates(conn)
        managed = crepo.managed_present_count(conn)
        subset = set(rng.sample(sorted(keys["desired"] | keys["mapped"]), 25))
        subset_full = plan_phonebook(crepo.load_entries(conn, "tgt_phonebook", subset),
                                     crepo.load_entries(conn, "phonebook_map", subset))
        subset_desired, subset_mapping = crepo.plan_candidates(conn, subset)
    prefiltered = plan_phonebook(desired, mapping)
    assert prefiltered.changes == everything.changes and prefiltered.forget == everything.forget
    assert managed == everything.managed_count
    assert set(desired["contact_key"]) == keys["desired"] - keys["settled"]
    assert set(mapping["contact_key"]) == keys["mapped"] - keys["settled"]
    in_subset = plan_phonebook(subset_desired, subset_mapping)
    assert (in_subset.changes, in_subset.forget) == (subset_full.changes, subset_full.forget)
    assert set(subset_desired["contact_key"]) == (keys["desired"] & subset) - keys["settled"]

    # Rows from before the fingerprints get theirs from what they store: then every clean entry is left out.
    with engine.begin() as conn:
        assert crepo.fill_fingerprints(conn, crepo.missing_fingerprints(desired, mapping)) > 0
    with engine.connect() as conn:
        desired, mapping = crepo.plan_candidates(conn)
        assert crepo.missing_fingerprints(desired, mapping) == []
    filled = plan_phonebook(desired, mapping)
    assert (filled.changes, filled.forget) == (everything.changes, everything.forget)
    assert set(desired["contact_key"]) == keys["desired"] - keys["clean"]
    assert set(mapping["contact_key"]) == keys["mapped"] - keys["clean"]


def test_fingerprints_are_written_with_targets_and_with_every_current(engine: Engine) -> None:
    from m365_3cx.transform.phonebook import managed_fingerprint, target_fields

    row = {"contact_key": "k", "tag": "m365-sync:k", "first_name": "Ann", "last_name": None, "company_name": None,
           "title": None, "department": None, "email": None, "phone_number": "+1650", "mobile2": None,
           "business": None, "business2": None, "home": None, "business_fax": None, "other": None,
           "owner_ids": ["u1"], "copies": 1, "state": "active"}
    with engine.begin() as conn:
        crepo.replace_phonebook_targets(conn, [{**row, "fields_hash": "stale"}], "r", NOW)
        crepo.patch_phonebook_targets(conn, [{**row, "contact_key": "j", "first_name": "Bo"}], "r", NOW)
        crepo.patch_phonebook_targets(conn, [{"contact_key": "p", "tag": "m365-sync:p", "state": "active"}],
                                      "r", NOW)
        hashes = dict(conn.execute(select(tgt_phonebook.c.contact_key, tgt_phonebook.c.fields_hash)).all())
        crepo.record_pending_many(conn, [("k", "m365-sync:k"), ("j", "m365-sync:j")], "r", NOW)
        crepo.apply_snapshot(conn, [SnapshotMatch("k", 1, True, {"FirstName": " Ann", "PhoneNumber": "+1650",
                                                                 "Tag": "m365-sync:k"})], "r", NOW)
        crepo.set_entry_facts(conn, {"j": (2, {"FirstName": "Bo"})}, NOW)
        current = dict(conn.execute(select(phonebook_map.c.contact_key, phonebook_map.c.current_hash)).all())
        crepo.apply_snapshot(conn, [SnapshotMatch("k", None, False, None)], "r2", NOW)
        gone = conn.execute(select(phonebook_map.c.current_hash).where(phonebook_map.c.contact_key == "k")).scalar()
    assert hashes["k"] == managed_fingerprint(target_fields(row)) == current["k"]  # " Ann" folds into "Ann"
    assert hashes["j"] == managed_fingerprint(target_fields({**row, "first_name": "Bo"}))
    assert hashes["p"] is None  # a row without its managed columns: no fingerprint, always a candidate
    assert current["j"] == managed_fingerprint({"FirstName": "Bo"}) and gone is None


def test_snapshot_compares_fingerprints_and_rewrites_entries_from_before_them(engine: Engine) -> None:
    with engine.begin() as conn:
        crepo.record_pending_many(conn, [("a", "m365-sync:a"), ("b", "m365-sync:b")], "r", NOW)
        crepo.apply_snapshot(conn, [SnapshotMatch("a", 1, True, {"FirstName": "Ann"}),
                                    SnapshotMatch("b", 2, True, {"FirstName": "Bo"})], "r", NOW)
        conn.execute(update(phonebook_map).where(phonebook_map.c.contact_key == "b").values(current_hash=None))
    same = [SnapshotMatch("a", 1, True, {"FirstName": "Ann"}), SnapshotMatch("b", 2, True, {"FirstName": "Bo"})]
    statements = _Statements(engine)
    counts = []
    for run, matches in (("r2", same), ("r3", same),
                         ("r4", [SnapshotMatch("a", 1, True, {"FirstName": "Ann", "Title": "CTO"}), same[1]])):
        statements.count = 0
        with engine.begin() as conn:
            crepo.apply_snapshot(conn, matches, run, NOW)
        counts.append(statements.count)
    # the entry without a fingerprint is rewritten once, then nothing; then the hand edit alone
    assert counts == [counts[1] + 1, counts[1], counts[1] + 1]
    with engine.connect() as conn:
        rows = {r.contact_key: r for r in conn.execute(select(phonebook_map))}
    assert rows["a"].current == {"FirstName": "Ann", "Title": "CTO"} and rows["b"].current_hash is not None


_HASH_TEXT = st.text(alphabet='aZ é李\u00a0"\\/\n\x01\u2028\U0001f642', max_size=6)
_HASHED = st.none() | _HASH_TEXT | st.lists(_HASH_TEXT, max_size=3) | st.integers() \
    | st.lists(st.integers() | _HASH_TEXT, max_size=2) | st.dictionaries(_HASH_TEXT, st.integers(), max_size=2)


@given(st.dictionaries(st.sampled_from(crepo.CONTACT_SOURCE_COLUMNS), _HASHED, max_size=8))
def test_row_hash_is_the_sha256_of_the_sorted_compact_json_of_the_source_columns(row: dict[str, Any]) -> None:
    """The hash staged rows are compared by: unchanged for rows staged before (any value a row may hold)."""
    source = {col: row.get(col) for col in crepo.CONTACT_SOURCE_COLUMNS}
    payload = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    assert crepo._row_hash({**row, "contact_id": "c", "row_hash": "x"}) == \
        hashlib.sha256(payload.encode("utf-8")).hexdigest()
