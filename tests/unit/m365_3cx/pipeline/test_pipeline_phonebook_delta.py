"""The incremental phonebook transform and plan of delta runs equal a full recomputation.

Random tenants (owners in several regions, contacts that de-duplicate across owners) get random
changes between a full run and a delta run: edits that move a contact to another entry, numbers
and names changed, deletes, purges (exclusion category), new contacts merging into existing
entries, an owner leaving scope and an owner's ``usageLocation`` changing. After the delta run's
incremental transform, ``tgt_phonebook`` (active rows) and ``tgt_phonebook_sources`` must be what
a full transform of the same staging computes, and the delta plan must be the full plan.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from m365_3cx.pipeline import contacts as steps
from m365_3cx.pipeline.phonebook_delta import delta_plan_keys
from m365_3cx.reconcile.phonebook import plan_phonebook as full_plan
from m365_3cx.reconcile.plan import plan_rows
from m365_3cx.settings import Settings
from m365_3cx.staging import contacts as crepo
from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.frames import load_frame
from m365_3cx.staging.runs import load_plan, set_plan_status
from m365_3cx.staging.schema import (
    phonebook_map,
    stg_contacts,
    stg_users,
    sync_runs,
    tgt_phonebook,
    tgt_phonebook_sources,
)
from m365_3cx.transform.phonebook import FIELD_COLUMNS, MANAGED_FIELDS

T0 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)
NAMES = ["Ann Lee", "Bo Chan", "Cy Diaz", "Di Eze", "Ed Fox", "Flo Gray"]
REGIONS = ["US", "GB", "DE", None]


def _settings() -> Any:
    return Settings.from_mapping({"contacts": {"personal_contacts": "all"}})


def _user(uid: str, region: str | None, now: dt.datetime, run_key: str, in_scope: bool = True) -> dict[str, Any]:
    return {"user_id": uid, "user_principal_name": f"{uid}@x.example", "usage_location": region,
            "in_scope": in_scope, "deleted": False, "first_seen_at": T0, "updated_at": now, "last_run_key": run_key,
            "row_hash": f"{uid}{region}{in_scope}"}


def _contact(rng: random.Random, cid: str) -> dict[str, Any]:
    given, surname = rng.choice(NAMES).split()
    item: dict[str, Any] = {"id": cid, "givenName": given, "surname": surname, "changeKey": cid,
                            "mobilePhone": rng.choice(["650 555 0101", "650 555 0102", "+44 20 7946 0018", None]),
                            "businessPhones": rng.sample(["650 555 0199", "030 1234567", "+1 212 555 0100"],
                                                         rng.randint(0, 2)),
                            "companyName": rng.choice(["Acme", None, "Zed"]), "categories": []}
    if rng.random() < 0.1:
        item["givenName"] = item["surname"] = None
        item["displayName"] = rng.choice(NAMES)
    return item


def _run(conn: Any, run_key: str, mode: str, started: dt.datetime, status: str = "success") -> None:
    conn.execute(sync_runs.insert(), [{"run_key": run_key, "dag_id": "m365_3cx_delta" if mode == "delta"
                                       else "m365_3cx_full_sync", "run_id": run_key, "mode": mode,
                                       "dry_run": False, "status": status, "started_at": started}])


def _stage(conn: Any, owner: str, items: list[dict[str, Any]], run_key: str, now: dt.datetime) -> None:
    crepo.merge_contacts(conn, [crepo.contact_row_from_graph(i, owner, None) for i in items], run_key, now)


def _targets(engine: Engine) -> dict[str, tuple[Any, ...]]:
    cols = [c for c in tgt_phonebook.c if c.name not in ("run_key", "computed_at", "state")]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).where(tgt_phonebook.c.state == "active")).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _sources(engine: Engine) -> set[tuple[str, str, str]]:
    t = tgt_phonebook_sources
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.select(t.c.owner_id, t.c.contact_id, t.c.contact_key))}


def _as_applied(engine: Engine, now: dt.datetime) -> None:
    """Make phonebook_map what an apply of the current targets would leave (every entry present)."""
    with engine.begin() as conn:
        conn.execute(sa.delete(phonebook_map))
        rows = []
        for i, row in enumerate(conn.execute(sa.select(tgt_phonebook)).mappings(), start=1):
            current = {f: row[FIELD_COLUMNS[f]] for f in MANAGED_FIELDS}
            rows.append({"contact_key": row["contact_key"], "tag": row["tag"], "threecx_id": i, "status": "active",
                         "present": True, "current": current, "duplicate_ids": [], "created_at": now,
                         "updated_at": now})
        upsert(conn, phonebook_map, rows, ["contact_key"])


def _plan_signature(engine: Engine, plan_key: str) -> set[tuple[Any, ...]]:
    return {(r["action"], r["object_key"], str(sorted((r["changes"] or {}).items())))
            for r in _load_plan(engine, plan_key)}


def _load_plan(engine: Engine, plan_key: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return load_plan(conn, plan_key)


def _random_tenant(engine: Engine, rng: random.Random, n_owners: int, per_owner: tuple[int, int]
                   ) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """``n_owners`` owners in random regions with random contacts, staged by the successful full run r0
    (not yet transformed)."""
    owners = [f"u{i}" for i in range(n_owners)]
    contacts = {o: [_contact(rng, f"{o}-c{j}") for j in range(rng.randint(*per_owner))] for o in owners}
    with engine.begin() as conn:
        upsert(conn, stg_users, [_user(o, rng.choice(REGIONS), T0, "r0") for o in owners], ["user_id"])
        for owner, items in contacts.items():
            _stage(conn, owner, items, "r0", T0)
        _run(conn, "r0", "full", T0)
    return owners, contacts


def _one_owner_full_run(engine: Engine, seed: int, contacts: int) -> random.Random:
    """Owner u1 with ``contacts`` random contacts, transformed by the successful full run r0."""
    rng = random.Random(seed)
    with engine.begin() as conn:
        upsert(conn, stg_users, [_user("u1", "US", T0, "r0")], ["user_id"])
        _stage(conn, "u1", [_contact(rng, f"c{j}") for j in range(contacts)], "r0", T0)
        _run(conn, "r0", "full", T0)
    steps.transform_phonebook(engine, _settings(), "r0", T0, mode="full")
    return rng


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_delta_transform_and_plan_equal_a_full_recomputation(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    settings = _settings()
    owners, contacts = _random_tenant(engine, rng, 6, (3, 12))
    steps.transform_phonebook(engine, settings, "r0", T0, mode="full")
    _as_applied(engine, T0)

    t1 = T0 + dt.timedelta(minutes=5)
    with engine.begin() as conn:
        _run(conn, "r1", "delta", t1, status="running")
        for owner in rng.sample(owners, 3):
            items = contacts[owner]
            edited = [dict(i, surname=rng.choice(NAMES).split()[1]) for i in rng.sample(items, min(2, len(items)))]
            edited += [dict(i, mobilePhone=rng.choice(["650 555 0101", "+44 20 7946 0018", None]),
                            businessPhones=[]) for i in rng.sample(items, 1)]
            edited += [_contact(rng, f"{owner}-new{j}") for j in range(rng.randint(0, 3))]
            _stage(conn, owner, edited, "r1", t1)
            crepo.mark_contacts_deleted(conn, owner, [items[-1]["id"]], "r1", t1)
        victim = rng.choice(owners)
        crepo.purge_contacts(conn, victim, [contacts[victim][0]["id"]])  # got the exclusion category
        moved, gone = rng.sample(owners, 2)
        conn.execute(sa.update(stg_users).where(stg_users.c.user_id == moved).values(
            usage_location="GB" if rng.random() < 0.5 else "DE", updated_at=t1, last_run_key="r1"))
        conn.execute(sa.update(stg_users).where(stg_users.c.user_id == gone).values(
            in_scope=False, updated_at=t1, last_run_key="r1"))
    counts = steps.transform_phonebook(engine, settings, "r1", t1, mode="delta")
    assert counts["incremental"] == 1
    assert counts["dirty"] < sum(len(v) for v in contacts.values()) + 10
    incremental_targets, incremental_sources = _targets(engine), _sources(engine)
    delta = steps.plan_phonebook(engine, "r1", now=t1, mode="delta")
    assert delta_plan_keys(engine, "r1", t1) is not None
    delta_plan = _plan_signature(engine, steps.contact_plan_key("r1"))

    with engine.connect() as conn:  # the full plan of the same state, without touching staging
        everything = full_plan(load_frame(conn, "tgt_phonebook"), load_frame(conn, "phonebook_map"))
    full_signature = {(r["action"], r["object_key"], str(sorted(r["changes"].items())))
                      for r in plan_rows(everything.changes, "full")}
    assert delta_plan == full_signature
    assert delta["managed"] == everything.managed_count

    steps.transform_phonebook(engine, settings, "r2", t1, mode="full")
    assert incremental_targets == _targets(engine)
    assert incremental_sources == _sources(engine)


def test_delta_with_changed_settings_recomputes_everything(engine: Engine) -> None:
    _one_owner_full_run(engine, seed=9, contacts=5)
    with engine.begin() as conn:
        _run(conn, "r1", "delta", T0 + dt.timedelta(minutes=5), status="running")
    other = Settings.from_mapping({"contacts": {"personal_contacts": "all"}, "extensions": {"default_region": "GB"}})
    counts = steps.transform_phonebook(engine, other, "r1", T0, mode="delta")
    assert "incremental" not in counts
    assert delta_plan_keys(engine, "r1", T0) is None  # so the plan diffs everything as well


def test_failed_writes_are_diffed_again_by_the_next_delta(engine: Engine) -> None:
    rng = _one_owner_full_run(engine, seed=5, contacts=6)
    steps.plan_phonebook(engine, "r0", now=T0)
    plan = _load_plan(engine, steps.contact_plan_key("r0"))
    failed = plan[0]
    with engine.begin() as conn:
        set_plan_status(conn, steps.contact_plan_key("r0"), failed["seq"], "failed")
        _run(conn, "r1", "delta", T0 + dt.timedelta(minutes=5), status="running")
        _stage(conn, "u1", [dict(_contact(rng, "c-extra"), givenName="Zoe", surname="Young",
                                 mobilePhone="650 555 0177")], "r1", T0 + dt.timedelta(minutes=5))
    later = T0 + dt.timedelta(minutes=5)
    steps.transform_phonebook(engine, _settings(), "r1", later, mode="delta")
    keys = delta_plan_keys(engine, "r1", later)
    assert keys is not None and failed["object_key"] in keys
    steps.plan_phonebook(engine, "r1", now=later, mode="delta")
    planned = {r["object_key"] for r in _load_plan(engine, steps.contact_plan_key("r1"))}
    assert failed["object_key"] in planned  # never written, so still a create
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(stg_contacts)).scalar_one() == 7


def test_targets_of_a_run_that_did_not_reach_3cx_are_recomputed_and_diffed_whole(engine: Engine) -> None:
    """A dry delta computed the targets (settings changed): the next real delta must diff everything."""
    _one_owner_full_run(engine, seed=3, contacts=5)
    _as_applied(engine, T0)
    off = Settings.from_mapping({"contacts": {"personal_contacts": "off"}})
    with engine.begin() as conn:
        conn.execute(sync_runs.insert(), [{"run_key": "dry", "dag_id": "m365_3cx_delta", "run_id": "dry",
                                           "mode": "delta", "dry_run": True, "status": "success",
                                           "started_at": T0 + dt.timedelta(minutes=5)}])
    assert "incremental" not in steps.transform_phonebook(engine, off, "dry", T0, mode="delta")
    with engine.begin() as conn:
        _run(conn, "r2", "delta", T0 + dt.timedelta(minutes=10), status="running")
    counts = steps.transform_phonebook(engine, off, "r2", T0, mode="delta")
    assert "incremental" not in counts and delta_plan_keys(engine, "r2", T0) is None
    plan = steps.plan_phonebook(engine, "r2", now=T0, mode="delta")
    assert plan["delete"] == len(_load_plan(engine, steps.contact_plan_key("r2"))) > 0


def test_a_shared_mailbox_moving_region_rekeys_its_entries_in_a_delta(engine: Engine) -> None:
    """Shared-mailbox contacts (owner ``shared:<id>``) take the mailbox's usageLocation."""
    settings = Settings.from_mapping({"contacts": {"personal_contacts": "all", "shared_mailboxes": ["sm@x.example"]}})
    item = {"id": "s1", "givenName": "Ann", "surname": "Lee", "mobilePhone": "020 7946 0018", "categories": []}
    with engine.begin() as conn:
        upsert(conn, stg_users, [_user("sm", "US", T0, "r0", in_scope=False)], ["user_id"])
        rows = [crepo.contact_row_from_graph(item, "shared:sm", None, source="shared")]
        crepo.merge_contacts(conn, rows, "r0", T0)
        _run(conn, "r0", "full", T0)
    steps.transform_phonebook(engine, settings, "r0", T0, mode="full")
    before = _targets(engine)
    t1 = T0 + dt.timedelta(minutes=5)
    with engine.begin() as conn:
        _run(conn, "r1", "delta", t1, status="running")
        conn.execute(sa.update(stg_users).where(stg_users.c.user_id == "sm").values(
            usage_location="GB", updated_at=t1, last_run_key="r1"))
    assert steps.transform_phonebook(engine, settings, "r1", t1, mode="delta")["incremental"] == 1
    incremental = _targets(engine)
    assert incremental != before  # +1 020... read as a US number before, a UK one now
    steps.transform_phonebook(engine, settings, "r2", t1, mode="full")
    assert incremental == _targets(engine)


def _as_recomputed(engine: Engine, settings: Any, run_key: str, now: dt.datetime) -> tuple[Any, Any]:
    """(entries, sources) now, and what the full path makes of the same staging (it rewrites the targets)."""
    before = _targets(engine), _sources(engine)
    assert "incremental" not in steps.transform_phonebook(engine, settings, run_key, now, recompute_all=True)
    return before, (_targets(engine), _sources(engine))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_full_run_recomputes_only_what_changed_and_equals_a_full_recomputation(engine: Engine, seed: int) -> None:
    """The nightly full run after changes: incremental, and exactly what a from-scratch transform computes."""
    rng = random.Random(seed)
    settings = _settings()
    owners, contacts = _random_tenant(engine, rng, 5, (4, 10))
    assert "incremental" not in steps.transform_phonebook(engine, settings, "r0", T0, mode="full")

    t1 = T0 + dt.timedelta(days=1)
    with engine.begin() as conn:  # a full run's extract with no change writes nothing
        _run(conn, "r1", "full", t1, status="running")
    counts = steps.transform_phonebook(engine, settings, "r1", t1, mode="full")
    assert (counts["incremental"], counts["dirty"], counts["entries"], counts["removed"]) == (1, 0, 0, 0)

    t2 = T0 + dt.timedelta(days=2)
    with engine.begin() as conn:
        conn.execute(sa.update(sync_runs).where(sync_runs.c.run_key == "r1").values(status="success"))
        _run(conn, "r2", "full", t2, status="running")
        edited, deleted, gone, purged, moved = rng.sample(owners, 5)
        items = contacts[edited]
        _stage(conn, edited, [dict(items[0], surname="Quinn", mobilePhone="650 555 0142")], "r2", t2)
        # the full round did not return it: soft-deleted by the "missing in stream" sweep
        crepo.mark_missing_in_streams(conn, [(deleted, None, {i["id"] for i in contacts[deleted][1:]})], "r2", t2)
        crepo.mark_streams_gone(conn, gone, [None], "r2", t2)
        crepo.purge_contacts(conn, purged, [contacts[purged][0]["id"]])  # got the exclusion category
        conn.execute(sa.update(stg_users).where(stg_users.c.user_id == moved).values(
            usage_location="GB" if rng.random() < 0.5 else "DE", updated_at=t2, last_run_key="r2"))
    total = sum(len(v) for v in contacts.values())
    counts = steps.transform_phonebook(engine, settings, "r2", t2, mode="full")
    assert counts["incremental"] == 1 and 0 < counts["dirty"] < total and counts["entries"] > 0
    incremental, recomputed = _as_recomputed(engine, settings, "r2", t2)
    assert incremental == recomputed


def test_a_full_run_recomputes_everything_when_the_last_full_recompute_is_too_old(engine: Engine) -> None:
    from m365_3cx.pipeline.phonebook_delta import FULL_RECOMPUTE_AGE
    from m365_3cx.staging.phonebook_sources import transform_basis

    _one_owner_full_run(engine, seed=21, contacts=4)
    settings = _settings()
    with engine.connect() as conn:
        assert transform_basis(conn, "phonebook")["full_at"] == T0
    day = dt.timedelta(days=1)
    runs = [(f"n{i}", T0 + i * day) for i in range(1, 10)]
    paths = []
    for (key, when), (prev, _) in zip(runs, [("r0", T0), *runs], strict=False):
        with engine.begin() as conn:
            conn.execute(sa.update(sync_runs).where(sync_runs.c.run_key == prev).values(status="success"))
            _run(conn, key, "full", when, status="running")
        paths.append("incremental" in steps.transform_phonebook(engine, settings, key, when, mode="full"))
    bound = FULL_RECOMPUTE_AGE // day  # nightly runs: every bound-th one recomputes everything
    assert paths == [i % bound != 0 for i in range(1, 10)]
    with engine.connect() as conn:
        basis = transform_basis(conn, "phonebook")
    assert basis["full_at"] == runs[bound - 1][1] and basis["computed_at"] == runs[-1][1]
    # a delta run has no such bound, and full_resync always recomputes everything
    later = T0 + 30 * day
    with engine.begin() as conn:
        conn.execute(sa.update(sync_runs).where(sync_runs.c.run_key == "n9").values(status="success"))
        _run(conn, "d1", "delta", later, status="running")
    assert steps.transform_phonebook(engine, settings, "d1", later, mode="delta")["incremental"] == 1
    assert "incremental" not in steps.transform_phonebook(engine, settings, "d1", later, mode="full",
                                                          recompute_all=True)


def test_a_full_run_after_shared_mailbox_changes_equals_a_full_recomputation(engine: Engine) -> None:
    """One shared mailbox taken off the list (its stream gone), another moving region: both reach a full run."""
    settings = Settings.from_mapping({"contacts": {"personal_contacts": "all",
                                                   "shared_mailboxes": ["sa@x.example", "sb@x.example"]}})
    items = {"sa": {"id": "a1", "givenName": "Ann", "surname": "Lee", "mobilePhone": "+44 20 7946 0018",
                    "categories": []},
             "sb": {"id": "b1", "givenName": "Bo", "surname": "Chan", "mobilePhone": "020 7946 0019", "categories": []}}
    with engine.begin() as conn:
        upsert(conn, stg_users, [_user(uid, "US", T0, "r0", in_scope=False) for uid in items], ["user_id"])
        for uid, item in items.items():
            crepo.merge_contacts(conn, [crepo.contact_row_from_graph(item, f"shared:{uid}", None, source="shared")],
                                 "r0", T0)
        _run(conn, "r0", "full", T0)
    steps.transform_phonebook(engine, settings, "r0", T0, mode="full")
    before = _targets(engine)
    t1 = T0 + dt.timedelta(days=1)
    with engine.begin() as conn:
        _run(conn, "r1", "full", t1, status="running")
        crepo.mark_streams_gone(conn, "shared:sa", [None], "r1", t1)
        conn.execute(sa.update(stg_users).where(stg_users.c.user_id == "sb").values(
            usage_location="GB", updated_at=t1, last_run_key="r1"))
    counts = steps.transform_phonebook(engine, settings, "r1", t1, mode="full")
    assert counts["incremental"] == 1 and counts["dirty"] == 2 and counts["removed"] >= 1
    incremental, recomputed = _as_recomputed(engine, settings, "r1", t1)
    # Ann's entry went with her mailbox; Bo's national number becomes dialable with the UK region
    assert incremental == recomputed and len(before) == len(incremental[0]) == 1 and incremental[0] != before
