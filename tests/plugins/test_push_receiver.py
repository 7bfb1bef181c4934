"""The Graph change-notification receiver (api-server plugin app) over real HTTPS on real PostgreSQL.

The plugin's FastAPI app is served by uvicorn with a throwaway certificate; the posts are the
shapes Microsoft documents (learn.microsoft.com/graph/change-notifications-delivery-webhooks,
change-notifications-lifecycle-events). Staging is a fresh PostgreSQL database reached through
the ``m365_3cx_staging`` connection, as in the api-server.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
TENANT = "6f1c2d3e-0000-4000-8000-00000000aaaa"
USER = "11111111-2222-4333-8444-555555555555"
OTHER = "99999999-2222-4333-8444-555555555555"


def _plugin_module() -> Any:
    spec = importlib.util.spec_from_file_location("m365_3cx_push_plugin", ROOT / "plugins" / "m365_3cx_push.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch, pg_database: str, tls_dir: Path) -> Iterator[dict[str, Any]]:
    """The receiver on a free HTTPS port; yields its URLs, the staging engine and the secrets of two subscriptions."""
    from emulators.common.server import serve_in_thread
    from emulators.common.tls import ensure_tls
    from m365_3cx.staging import push
    from m365_3cx.staging.schema import create_schema

    url = sa.engine.make_url(pg_database)
    monkeypatch.setenv("AIRFLOW_CONN_M365_3CX_STAGING", json.dumps({
        "conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}))
    engine = sa.create_engine(pg_database)
    create_schema(engine)
    now = datetime.now(UTC)
    secrets_of = {"users": secrets.token_urlsafe(48), "contacts": secrets.token_urlsafe(48)}
    with engine.begin() as conn:
        for sid, purpose, user in (("sub-users", "users", None), ("sub-contacts", "contacts", USER)):
            push.save_subscription(conn, {
                "subscription_id": sid, "purpose": purpose, "user_id": user,
                "resource": "users" if user is None else f"users/{user}/contacts",
                "client_state_sha256": push.client_state_digest(secrets_of[purpose]), "tenant_id": TENANT,
                "status": "active", "created_at": now, "expires_at": now + timedelta(days=2)})
    tls = ensure_tls(tls_dir)
    module = _plugin_module()
    server = serve_in_thread(module.create_app(), tls)
    session = _Http(str(tls.ca_cert))
    base = server.base_url
    yield {"notifications": f"{base}/notifications", "lifecycle": f"{base}/lifecycle", "engine": engine,
           "secrets": secrets_of, "http": session}
    session.close()
    server.stop()
    module._engine_state["engine"] and module._engine_state["engine"].dispose()
    engine.dispose()


class _Http(requests.Session):
    """A session that verifies against the test CA (a per-request ``verify``: REQUESTS_CA_BUNDLE cannot win)."""

    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self.ca_bundle)
        return super().request(method, url, *args, **kwargs)


def _queue(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, user_id, subscription_id, source, notification_id "
                                    "FROM push_queue ORDER BY id"))
        return [dict(r._mapping) for r in rows]


def _rejections(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT reason, count FROM push_rejections")).all())


def _contact_change(client_state: str, nid: str | None = "n-1", resource_user: str = OTHER,
                    subscription: str = "sub-contacts", tenant: str = TENANT) -> dict[str, Any]:
    item = {"subscriptionId": subscription, "subscriptionExpirationDateTime": "2026-12-04T00:00:00Z",
            "clientState": client_state, "changeType": "created", "tenantId": tenant,
            "resource": f"Users/{resource_user}/Contacts/AAMk1",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Contact", "@odata.id": "Users/x/Contacts/AAMk1",
                             "id": "AAMk1"}}
    if nid:
        item["id"] = nid
    return item


def test_validation_handshake_echoes_the_token_as_plain_text(receiver: dict[str, Any]) -> None:
    http = receiver["http"]
    for route in ("notifications", "lifecycle"):
        answer = http.post(receiver[route], params={"validationToken": "Validation: Testing client <x> & y"},
                           headers={"Content-Type": "text/plain"}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.text == "Validation: Testing client <x> & y"
    assert http.post(receiver["notifications"], params={"validationToken": ""}, timeout=10).status_code == 400


def test_authentic_notifications_are_queued_fast_and_forgeries_change_nothing(receiver: dict[str, Any]) -> None:
    http, engine, keys = receiver["http"], receiver["engine"], receiver["secrets"]
    users_change = {"id": "n-2", "subscriptionId": "sub-users", "clientState": keys["users"], "tenantId": TENANT,
                    "changeType": "updated", "resource": f"Users/{USER}", "resourceData": {"id": USER}}
    body = {"value": [_contact_change(keys["contacts"]), _contact_change(keys["contacts"]), users_change]}

    started = time.monotonic()
    answer = http.post(receiver["notifications"], json=body, timeout=10)
    assert time.monotonic() - started < 3.0
    assert answer.status_code == 202, answer.text
    assert answer.json()["queued"] == 2 and answer.json()["duplicates"] == 1
    # the mailbox is our subscription's, never the resource path the post names
    assert _queue(engine) == [
        {"kind": "contacts", "user_id": USER, "subscription_id": "sub-contacts", "source": "notification",
         "notification_id": "n-1"},
        {"kind": "users", "user_id": USER, "subscription_id": "sub-users", "source": "notification",
         "notification_id": "n-2"},
    ]

    forged = [
        ({"value": [_contact_change("guessed", nid="f-1")]}, 403, "client_state"),
        ({"value": [_contact_change(keys["users"], nid="f-2")]}, 403, "client_state"),  # another sub's secret
        ({"value": [_contact_change(keys["contacts"], nid="f-3", subscription="sub-unknown")]}, 404,
         "unknown_subscription"),
        ({"value": [_contact_change(keys["contacts"], nid="f-4", tenant="72f988bf-86f1-41af-91ab-2d7cd011db47")]},
         403, "tenant"),
        # one forged notification rejects the whole post, the authentic one with it
        ({"value": [_contact_change(keys["contacts"], nid="f-5"), _contact_change("guessed", nid="f-6")]}, 403,
         "client_state"),
        (body, 409, "replay"),
        ({"value": []}, 400, "bad_request"),
        ({"value": [{"subscriptionId": "sub-contacts"}]}, 400, "bad_request"),
    ]
    for post, status, reason in forged:
        answer = http.post(receiver["notifications"], json=post, timeout=10)
        assert (answer.status_code, answer.json()["status"]) == (status, reason), post
    answer = http.post(receiver["notifications"], data=b"not json", timeout=10)
    assert answer.status_code == 400
    assert len(_queue(engine)) == 2
    assert _rejections(engine) == {"client_state": 3, "unknown_subscription": 1, "tenant": 1, "replay": 1,
                                   "bad_request": 3}
    # a new change to the same contact (new notification id) is queued again
    answer = http.post(receiver["notifications"], json={"value": [_contact_change(keys["contacts"], nid="n-3")]},
                       timeout=10)
    assert answer.status_code == 202 and len(_queue(engine)) == 3


def test_lifecycle_events_mark_subscriptions_and_queue_catch_ups(receiver: dict[str, Any]) -> None:
    http, engine, keys = receiver["http"], receiver["engine"], receiver["secrets"]

    def event(name: str, sid: str = "sub-contacts", client_state: str | None = None) -> dict[str, Any]:
        return {"subscriptionId": sid, "subscriptionExpirationDateTime": "2026-12-04T00:00:00Z", "tenantId": TENANT,
                "clientState": client_state or keys["contacts"], "lifecycleEvent": name}

    assert http.post(receiver["lifecycle"], json={"value": [event("missed", client_state="x")]},
                     timeout=10).status_code == 403
    assert http.post(receiver["lifecycle"], json={"value": [event("subscriptionExploded")]},
                     timeout=10).status_code == 400
    assert _queue(engine) == []

    assert http.post(receiver["lifecycle"], json={"value": [event("missed")]}, timeout=10).status_code == 202
    assert http.post(receiver["lifecycle"], json={"value": [event("reauthorizationRequired", "sub-users",
                                                                  keys["users"])]}, timeout=10).status_code == 202
    assert [(r["kind"], r["user_id"], r["source"]) for r in _queue(engine)] == [("contacts", USER, "missed")]
    assert http.post(receiver["lifecycle"], json={"value": [event("subscriptionRemoved")]},
                     timeout=10).status_code == 202
    with engine.connect() as conn:
        status = dict(conn.execute(sa.text("SELECT subscription_id, status FROM push_subscriptions")).all())
    assert status == {"sub-users": "reauthorize", "sub-contacts": "removed"}
    assert [r["source"] for r in _queue(engine)] == ["missed", "subscriptionRemoved"]
