"""Creates are idempotent: a crash between "created in 3CX" and "recorded in staging" never
yields a second copy. Both emulators over HTTPS, staging in PostgreSQL, the real pipeline steps.

The crash is reproduced as it happens: the planned creates of some records are sent to 3CX by
an earlier attempt (the real client, the plan's own fields) whose outcome never reached
staging, so the plan still lists them as open; the apply that follows re-links them by their own
identity (one filtered read per chunk of 20 creates) and creates only the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline import contacts as cpipe
from m365_3cx.pipeline import users as upipe
from m365_3cx.pipeline.outcomes import load_changes
from m365_3cx.settings import Settings
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials, clear_token_cache

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=6, backoff_base=0.01, backoff_cap=0.05, max_total_wait=30,
                   connect_timeout=5, read_timeout=30)
SETTINGS = Settings.from_mapping({
    "numbering": {"policy": "pool", "pool_first": "300", "pool_last": "399"},
    "contacts": {"personal_contacts": "all", "shard_size": 200},
})
RUN = "m365_3cx_full_sync/crash"


@pytest.fixture
def env(graph_emulator: Any, threecx_emulator: Any, pg_database: str) -> Iterator[dict[str, Any]]:
    info = graph_emulator.info
    graph = GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=str(info["authority"]).rstrip("/").rsplit("/", 1)[0], graph_url=info["graph_url"],
        ca_bundle=info["ca_bundle"]), FAST)
    clear_token_cache()
    pbx = threecx_emulator.info
    threecx = ThreeCXClient(ThreeCXCredentials(pbx["base_url"], pbx["client_id"], pbx["client_secret"],
                                               ca_bundle=pbx["ca_bundle"]), FAST)
    engine = make_engine(pg_database)
    create_schema(engine)
    _go_live(engine)
    yield {"graph": graph, "threecx": threecx, "engine": engine, "pbx": threecx_emulator}
    graph.close()
    threecx.close()
    engine.dispose()
    clear_token_cache()


def _go_live(engine: Any) -> None:
    """Writes on, through the audited call the ``m365_3cx_go_live`` DAG makes (off on a fresh install)."""
    from m365_3cx.staging.control import set_writes_enabled

    with engine.begin() as conn:
        set_writes_enabled(conn, True, changed_by="tests/integration", now=datetime.now(UTC), note="tests write")


def _reads(env: dict[str, Any], route: str) -> int:
    return int(env["pbx"].admin("GET", "counters").json()["requests"].get(route, 0))


def test_lost_extension_and_phonebook_creates_are_relinked_not_duplicated(env: dict[str, Any]) -> None:
    engine, graph, threecx, now = env["engine"], env["graph"], env["threecx"], datetime.now(UTC)
    upipe.extract_users(engine, graph, SETTINGS, RUN, "full", now)
    upipe.snapshot_threecx(engine, threecx, RUN, now, SETTINGS)
    upipe.transform_users(engine, SETTINGS, RUN, now)
    upipe.plan_users(engine, SETTINGS, RUN, None, now)
    for shard in cpipe.contact_shards(engine, SETTINGS):
        cpipe.extract_contacts(engine, graph, SETTINGS, RUN, "full", shard, now)
    cpipe.snapshot_phonebook(engine, threecx, SETTINGS, RUN, now)
    cpipe.transform_phonebook(engine, SETTINGS, RUN, now)
    cpipe.plan_phonebook(engine, RUN)
    with engine.connect() as conn:
        user_creates = [c for _, c in load_changes(conn, RUN, "extension") if c.action == "create"]
        contact_creates = [c for _, c in load_changes(conn, cpipe.contact_plan_key(RUN), "contact")
                           if c.action == "create"]
    assert len(user_creates) >= 3 and len(contact_creates) >= 25

    # an earlier attempt created these in 3CX, then died before recording anything
    lost_users, lost_contacts = user_creates[:3], contact_creates[:25]
    for change in lost_users:
        threecx.create_user({f: after for f, (_b, after) in change.fields.items()} | {"Number": change.number})
    for change in lost_contacts:
        threecx.create_contact({f: after for f, (_b, after) in change.fields.items()})

    env["pbx"].admin("DELETE", "counters")
    users = upipe.apply_users(engine, threecx, SETTINGS, RUN, now, dry_run=False, allow_mass_removal=False)
    phonebook = cpipe.apply_phonebook(engine, threecx, SETTINGS, RUN, now, dry_run=False, allow_mass_removal=False)
    assert users["relinked"] == 3 and users["created"] == len(user_creates) - 3 and users["failed"] == 0
    assert phonebook["relinked"] == 25 and phonebook["created"] == len(contact_creates) - 25
    assert phonebook["failed"] == 0
    # bulk reads, never one per record: one filtered read per chunk of 20 creates
    assert _reads(env, "GET /xapi/v1/Contacts") == -(-len(contact_creates) // 20)
    assert _reads(env, "GET /xapi/v1/Users") == -(-len(user_creates) // 20)

    state = env["pbx"].admin("GET", "state").json()
    tags = Counter(c["Tag"] for c in state["contacts"] if str(c.get("Tag") or "").startswith("m365-sync:"))
    assert len(tags) == len(contact_creates) and set(tags.values()) == {1}
    numbers = Counter(u["Number"] for u in state["users"])
    assert set(numbers.values()) == {1}
    with engine.connect() as conn:
        mapped = dict(conn.execute(sa.text("SELECT contact_key, threecx_id FROM phonebook_map")).all())
        linked = dict(conn.execute(sa.text("SELECT user_id, threecx_id FROM extension_map")).all())
    ids = {c["Tag"]: c["Id"] for c in state["contacts"]}
    for change in lost_contacts:
        assert mapped[change.object_key] == ids[change.fields["Tag"][1]]
    by_number = {u["Number"]: u["Id"] for u in state["users"]}
    for change in lost_users:
        assert linked[change.object_key] == by_number[change.number]


@pytest.fixture(scope="module")
def m365_default_pbx(tls_dir: Any) -> Iterator[Any]:
    """A 3CX emulator whose undocumented default ContactType is ``M365`` instead of ``3CX``."""
    from emulators.threecx import start

    handle = start(tls_dir, seed=7, unmanaged=True, default_contact_type="M365")
    yield handle
    handle.stop()


def test_phonebook_ownership_does_not_depend_on_the_pbx_default_contact_type(
        graph_emulator: Any, m365_default_pbx: Any, pg_database: str) -> None:
    graph_emulator.admin("POST", "reset")
    info, pbx = graph_emulator.info, m365_default_pbx.info
    graph = GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=str(info["authority"]).rstrip("/").rsplit("/", 1)[0], graph_url=info["graph_url"],
        ca_bundle=info["ca_bundle"]), FAST)
    clear_token_cache()
    threecx = ThreeCXClient(ThreeCXCredentials(pbx["base_url"], pbx["client_id"], pbx["client_secret"],
                                               ca_bundle=pbx["ca_bundle"]), FAST)
    engine = make_engine(pg_database)
    create_schema(engine)
    _go_live(engine)
    try:
        assert m365_default_pbx.backend.create_contact({"FirstName": "Probe"})["ContactType"] == "M365"

        def run(key: str) -> dict[str, Any]:
            now = datetime.now(UTC)
            upipe.extract_users(engine, graph, SETTINGS, key, "full", now)
            for shard in cpipe.contact_shards(engine, SETTINGS):
                cpipe.extract_contacts(engine, graph, SETTINGS, key, "full", shard, now)
            cpipe.snapshot_phonebook(engine, threecx, SETTINGS, key, now)
            cpipe.transform_phonebook(engine, SETTINGS, key, now)
            planned = cpipe.plan_phonebook(engine, key)
            applied = cpipe.apply_phonebook(engine, threecx, SETTINGS, key, now, dry_run=False,
                                            allow_mass_removal=False)
            return {**planned, **{f"applied_{k}": v for k, v in applied.items()}}

        first = run("full/1")
        ours = [c for c in m365_default_pbx.admin("GET", "state").json()["contacts"]
                if str(c.get("Tag") or "").startswith("m365-sync:")]
        assert first["applied_created"] == len(ours) > 0
        assert {c["ContactType"] for c in ours} == {"3CX"}  # sent explicitly, not the PBX's default
        # whatever the PBX stamps on our entries later, they stay ours: nothing re-created or duplicated
        for contact in ours[:5]:
            m365_default_pbx.admin("PATCH", f"contacts/{contact['Id']}", json={"ContactType": "M365"})
        second = run("full/2")
        assert (second["create"], second["update"], second["delete"]) == (0, 0, 0)
        again = [c for c in m365_default_pbx.admin("GET", "state").json()["contacts"]
                 if str(c.get("Tag") or "").startswith("m365-sync:")]
        assert len(again) == len(ours)
    finally:
        graph.close()
        threecx.close()
        engine.dispose()
        clear_token_cache()


@pytest.mark.parametrize("read_concurrency", [2, 4])
def test_concurrent_lookups_find_exactly_what_sequential_ones_find(read_concurrency: int,
                                                                   threecx_emulator: Any) -> None:
    from m365_3cx.reconcile.existing import CHUNK, existing_by

    pbx = threecx_emulator.info
    clear_token_cache()

    def client(concurrency: int) -> ThreeCXClient:
        return ThreeCXClient(ThreeCXCredentials(pbx["base_url"], pbx["client_id"], pbx["client_secret"],
                                                ca_bundle=pbx["ca_bundle"]), FAST, read_concurrency=concurrency)

    tags = [f"m365-sync:lookup-{i:03d}" for i in range(3 * CHUNK + 7)]
    with client(1) as seed:
        for i, tag in enumerate(tags):  # the first chunk's 20 tags are held 6 times each: 120 records, 2 pages
            for copy in range(6 if i < CHUNK else i % 2):
                seed.create_contact({"FirstName": f"Lookup {i}", "LastName": f"copy {copy}", "Tag": tag})
    wanted = [*tags, "m365-sync:absent", "m365-sync:o'brien", ""]
    expected: dict[str, list[int]] = {}
    for contact in sorted(threecx_emulator.admin("GET", "state").json()["contacts"], key=lambda c: c["Id"]):
        if contact.get("Tag") and contact["Tag"] in wanted:
            expected.setdefault(contact["Tag"], []).append(contact["Id"])

    threecx_emulator.admin("DELETE", "counters")
    with client(1) as sequential_client:
        sequential = existing_by(sequential_client, "Contacts", "Tag", wanted, ["Tag", "FirstName"])
    reads_one_by_one = _counter(threecx_emulator, "GET /xapi/v1/Contacts")
    threecx_emulator.admin("DELETE", "counters")
    with client(read_concurrency) as concurrent_client:
        concurrent = existing_by(concurrent_client, "Contacts", "Tag", wanted, ["Tag", "FirstName"])
    assert concurrent == sequential
    assert {tag: [r["Id"] for r in records] for tag, records in concurrent.items()} == expected
    assert len(expected[tags[0]]) == 6 and tags[CHUNK] not in expected
    assert _counter(threecx_emulator, "GET /xapi/v1/Contacts") == reads_one_by_one == -(-(len(wanted) - 1) // CHUNK) + 1


def _counter(handle: Any, route: str) -> int:
    return int(handle.admin("GET", "counters").json()["requests"].get(route, 0))
