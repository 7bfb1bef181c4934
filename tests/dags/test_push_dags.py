"""Push end to end at DAG level: real Airflow (``dag.test()``), both emulators over HTTPS, the receiver
plugin app served over HTTPS, staging in a throwaway PostgreSQL database.

The subscriptions DAG creates the subscriptions (the emulator validates the receiver's URLs); a
rename, a new contact and a meeting now are notified by the emulator to the receiver, which queues
them; one push run carries all three to 3CX. With the receiver down nothing is lost: the timed delta
converges, and once the receiver is back the subscriptions DAG re-creates the subscription that
expired meanwhile and queues a catch-up delta of its mailbox, which the next push run drains.
(The live test with a scheduler and triggerer is tests/distributed/test_push_live.py.)
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, load_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT = _free_port()
SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 50},
    "presence": {"enabled": True, "mode": "respect", "shard_size": 50},
    "push": {"enabled": True, "notification_url": f"https://127.0.0.1:{PORT}/notifications",
             "lifecycle_url": f"https://127.0.0.1:{PORT}/lifecycle"},
}


class Receiver:
    """The receiver plugin app on :data:`PORT`; ``stop()``/``start()`` take it down and bring it back."""

    def __init__(self, tls_dir: Path) -> None:
        from emulators.common.tls import ensure_tls

        spec = importlib.util.spec_from_file_location("m365_3cx_push_plugin", ROOT / "plugins" / "m365_3cx_push.py")
        assert spec and spec.loader
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.tls = ensure_tls(tls_dir)  # the emulators' CA signs it, so the Graph emulator trusts it
        self.server: Any = None

    def start(self) -> None:
        from emulators.common.server import serve_in_thread

        self.server = serve_in_thread(self.module.create_app(), self.tls, port=PORT)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        engine = self.module._engine_state.get("engine")
        if engine is not None:
            engine.dispose()
            self.module._engine_state.update(engine=None, at=0.0)


@pytest.fixture
def env(dag_env: dict[str, Any], tls_dir: Path) -> Iterator[dict[str, Any]]:
    receiver = Receiver(tls_dir)
    receiver.start()
    dag_env["graph"].admin("DELETE", "subscriptions")
    try:
        yield {**dag_env, "receiver": receiver}
    finally:
        receiver.stop()
        dag_env["graph"].admin("DELETE", "subscriptions")


def run_dag(dag_id: str) -> Any:
    run = load_dag(dag_id).test()
    assert_success(run)
    return run


def sql(env: dict[str, Any], query: str, **params: Any) -> list[dict[str, Any]]:
    with env["engine"].connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(query), params).mappings().all()]


def members(env: dict[str, Any]) -> list[dict[str, Any]]:
    users = [u for u in env["graph"].admin("GET", "state").json()["users"]
             if u.get("mail") and u.get("userType", "Member") == "Member" and u.get("accountEnabled")
             and not u.get("deleted")]
    return sorted(users, key=lambda u: u["id"])


def extension(env: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    return next(u for u in env["pbx"].admin("GET", "state").json()["users"]
                if u.get("EmailAddress") == user["mail"].lower())


def phonebook_names(env: dict[str, Any]) -> set[str]:
    return {c.get("FirstName") or "" for c in env["pbx"].admin("GET", "state").json()["contacts"]}


def graph_subscriptions(env: dict[str, Any]) -> list[dict[str, Any]]:
    return list(env["graph"].admin("GET", "subscriptions").json()["subscriptions"])


def wait_for_queue(env: dict[str, Any], kinds: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = sql(env, "SELECT kind, user_id, source FROM push_queue WHERE done_at IS NULL")
        if kinds <= {r["kind"] for r in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def quiet_calendar(env: dict[str, Any], user: dict[str, Any]) -> None:
    graph = env["graph"]
    for event in graph.admin("GET", f"users/{user['id']}/mailbox").json()["events"]:
        graph.admin("DELETE", f"users/{user['id']}/events/{event['id']}")
    graph.admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "disabled"})


def meeting_now(env: dict[str, Any], user: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    fmt = "%Y-%m-%dT%H:%M:%S"
    body = {"subject": "Push", "showAs": "busy",
            "start": {"dateTime": (now - dt.timedelta(minutes=5)).strftime(fmt), "timeZone": "UTC"},
            "end": {"dateTime": (now + dt.timedelta(minutes=55)).strftime(fmt), "timeZone": "UTC"}}
    assert env["graph"].admin("POST", f"users/{user['id']}/events", json=body).status_code == 201


def test_notifications_drive_a_push_run_and_a_receiver_outage_loses_nothing(env: dict[str, Any]) -> None:
    graph = env["graph"]
    renamed, contact_owner, busy = members(env)[:3]
    quiet_calendar(env, busy)
    run_dag("m365_3cx_full_sync")
    assert extension(env, busy)["CurrentProfileName"] == "Available"

    counts = run_dag_counts(env, "m365_3cx_subscriptions")
    stored = sql(env, "SELECT purpose, count(*) AS n FROM push_subscriptions GROUP BY purpose")
    by_purpose = {r["purpose"]: r["n"] for r in stored}
    assert by_purpose["users"] == 1 and by_purpose["contacts"] >= 3 and by_purpose["events"] >= 3
    assert len(graph_subscriptions(env)) == sum(by_purpose.values()) == counts["created"]
    secrets_in_graph = {s["clientState"] for s in graph_subscriptions(env)}
    stored_values = {str(v) for row in sql(env, "SELECT * FROM push_subscriptions") for v in row.values()}
    assert not secrets_in_graph & stored_values  # staging never holds a clientState

    # three changes, notified by Graph, carried by one push run
    graph.admin("PATCH", f"users/{renamed['id']}", json={"surname": "Pushed"})
    graph.admin("POST", f"users/{contact_owner['id']}/contacts",
                json={"givenName": "Pia", "surname": "Push", "mobilePhone": "+49 170 5550101"})
    meeting_now(env, busy)
    queued = wait_for_queue(env, {"users", "contacts", "events"})
    assert {r["kind"] for r in queued} >= {"users", "contacts", "events"}, queued
    assert {r["user_id"] for r in queued if r["kind"] == "contacts"} == {contact_owner["id"]}
    run_dag("m365_3cx_push")
    assert extension(env, renamed)["LastName"] == "Pushed"
    assert "Pia" in phonebook_names(env)
    assert extension(env, busy)["CurrentProfileName"] == "Away"
    assert sql(env, "SELECT count(*) AS n FROM push_queue WHERE done_at IS NULL")[0]["n"] == 0
    push_run = sql(env, "SELECT counts FROM sync_runs WHERE dag_id = 'm365_3cx_push'")[0]["counts"]
    assert push_run["notifications"]["mailboxes"] == 2

    # receiver down: deliveries fail, a subscription expires meanwhile; the timed delta converges
    env["receiver"].stop()
    graph.admin("POST", f"users/{contact_owner['id']}/contacts",
                json={"givenName": "Otto", "surname": "Outage", "mobilePhone": "+49 170 5550102"})
    expired = next(s for s in graph_subscriptions(env) if s["resource"].endswith(f"{contact_owner['id']}/contacts"))
    assert graph.admin("POST", f"subscriptions/{expired['id']}/expire").status_code == 200
    run_dag("m365_3cx_delta")
    assert "Otto" in phonebook_names(env)

    # receiver back: the lifecycle DAG re-creates the expired subscription and queues a catch-up delta
    env["receiver"].start()
    counts = run_dag_counts(env, "m365_3cx_subscriptions")
    assert counts["recreated"] == 1 and counts["created"] == 1 and counts["catchups"] == 1
    assert len(graph_subscriptions(env)) == sum(by_purpose.values())
    catchup = sql(env, "SELECT kind, user_id FROM push_queue WHERE source = 'gap' AND done_at IS NULL")
    assert catchup == [{"kind": "contacts", "user_id": contact_owner["id"]}]
    run_dag("m365_3cx_push")
    assert sql(env, "SELECT count(*) AS n FROM push_queue WHERE done_at IS NULL")[0]["n"] == 0


def run_dag_counts(env: dict[str, Any], dag_id: str) -> dict[str, Any]:
    """Run ``dag_id`` and return the subscription counts its run recorded."""
    run_dag(dag_id)
    rows = sql(env, "SELECT counts FROM sync_runs WHERE dag_id = :d ORDER BY started_at DESC LIMIT 1", d=dag_id)
    return dict(rows[0]["counts"]["subscriptions"])
