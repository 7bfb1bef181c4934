"""Change notifications over real HTTPS: subscriptions, the handshake, delivery, lifecycle, faults."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.common.handle import EmulatorHandle
from tests.emulators.graph.conftest import GraphCaller
from tests.emulators.graph.webhook import WebhookReceiver

FAST = {"batch_window": 0.15, "retry_base": 0.1, "retry_max_backoff": 0.4, "max_attempts": 0,
        "retry_window": 4 * 3600, "delivery_timeout": 3.0, "validation_timeout": 10.0,
        "quota_users": 100, "quota_mailbox": 1000, "max_batch": 100}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(Path(tmp_path_factory.mktemp("webhook-tls")))
    yield hook
    hook.stop()


@pytest.fixture()
def hook(graph: EmulatorHandle, receiver: WebhookReceiver) -> WebhookReceiver:
    """The receiver, trusted by the emulator, with fast delivery settings."""
    receiver.reset()
    graph.admin("POST", "/subscriptions/trust", json={"pem": receiver.ca_pem})
    graph.admin("PUT", "/subscriptions/config", json=FAST)
    return receiver


def _in(minutes: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


class Api:
    """Authenticated calls to /v1.0/subscriptions."""

    def __init__(self, caller: GraphCaller) -> None:
        self.caller = caller

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.caller.session.request(method, f"{self.caller.info['graph_url']}/v1.0/{path}",
                                           headers={"Authorization": f"Bearer {self.caller.token}",
                                                    **kwargs.pop("headers", {})},
                                           verify=self.caller.info["ca_bundle"], timeout=30, **kwargs)

    def create(self, resource: str, url: str, *, change: str = "updated,deleted", minutes: float = 60,
               headers: dict[str, str] | None = None, **extra: Any) -> requests.Response:
        body = {"changeType": change, "notificationUrl": url, "resource": resource,
                "expirationDateTime": _in(minutes), "clientState": "s3cret-state", **extra}
        return self.call("POST", "subscriptions", json=body, headers=headers or {})


@pytest.fixture()
def api(caller: GraphCaller) -> Api:
    return Api(caller)


def _user(graph: EmulatorHandle, index: int = 0) -> dict[str, Any]:
    users = [u for u in graph.admin("GET", "/state").json()["users"]
             if u.get("mail") and u.get("userType") == "Member"]
    return users[index]


def _drain(graph: EmulatorHandle) -> None:
    assert graph.admin("POST", "/subscriptions/drain", json={"timeout": 15}).json()["ok"]


def _log(graph: EmulatorHandle, kind: str = "notification") -> list[dict[str, Any]]:
    return [e for e in graph.admin("GET", "/subscriptions/log").json()["entries"] if e["kind"] == kind]


# ------------------------------------------------------------------ create and the handshake

def test_create_runs_the_handshake_and_returns_the_subscription(graph: EmulatorHandle, hook: WebhookReceiver,
                                                                  api: Api) -> None:
    response = api.create("users", hook.url())
    assert response.status_code == 201, response.text
    sub = response.json()
    assert sub["resource"] == "users" and sub["changeType"] == "updated,deleted"
    assert sub["clientState"] == "s3cret-state" and sub["applicationId"] == graph.info["client_id"]
    assert sub["@odata.context"].endswith("/v1.0/$metadata#subscriptions/$entity")
    [validation] = hook.validations
    assert validation["token"].startswith("Validation: ") and " " in validation["token"]  # URL-decoded
    assert validation["content_type"].startswith("text/plain")
    listed = api.call("GET", "subscriptions").json()["value"]
    assert [s["id"] for s in listed] == [sub["id"]]
    assert api.call("GET", f"subscriptions/{sub['id']}").json()["expirationDateTime"] == sub["expirationDateTime"]


@pytest.mark.parametrize(("mode", "message"), [
    ("status", "Notification endpoint must respond with 200 OK to validation request."),
    ("wrong", "Response must exactly match validationToken query parameter."),
    ("html", "Response must exactly match validationToken query parameter."),
])
def test_failed_handshake_creates_nothing(graph: EmulatorHandle, hook: WebhookReceiver, api: Api, mode: str,
                                          message: str) -> None:
    hook.behaviour.validation = mode
    response = api.create("users", hook.url())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("Subscription validation request failed.") and message in error["message"]
    assert api.call("GET", "subscriptions").json()["value"] == []


def test_handshake_timeout(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"validation_timeout": 0.5})
    hook.behaviour.validation, hook.behaviour.validation_delay = "slow", 1.5
    response = api.create("users", hook.url())
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Subscription validation request timed out."
    assert api.call("GET", "subscriptions").json()["value"] == []


def test_lifecycle_url_is_validated_too(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    response = api.create(f"users/{user['id']}/contacts", hook.url(), change="created,updated,deleted",
                          lifecycleNotificationUrl=hook.url("lifecycle"))
    assert response.status_code == 201, response.text
    assert sorted(v["path"] for v in hook.validations) == ["/lifecycle", "/notify"]


def test_untrusted_receiver_fails_the_handshake(graph: EmulatorHandle, receiver: WebhookReceiver, api: Api,
                                                tmp_path: Path) -> None:
    stranger = WebhookReceiver(tmp_path)  # its own CA, never given to the emulator
    try:
        response = api.create("users", stranger.url())
        assert response.status_code == 400
        assert "Subscription validation request failed." in response.json()["error"]["message"]
        assert stranger.validations == []
    finally:
        stranger.stop()


def test_bad_requests(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    http = api.create("users", hook.url().replace("https://", "http://"))
    assert http.status_code == 400
    assert http.json()["error"]["message"] == "NotificationUrl scheme='http' is not supported."
    created = api.create("users", hook.url(), change="created,updated")
    assert created.status_code == 400 and "'created' is not supported" in created.json()["error"]["message"]
    assert api.create("users", hook.url(), change="changed").status_code == 400
    long_state = api.create("users", hook.url(), clientState="x" * 129)
    assert long_state.status_code == 400
    folder = api.create(f"users/{user['id']}/contactFolders/abc/contacts", hook.url())
    assert folder.status_code == 400
    assert api.create("me/events", hook.url()).status_code == 400
    no_expiry = api.call("POST", "subscriptions", json={"changeType": "updated", "notificationUrl": hook.url(),
                                                        "resource": "users"})
    assert no_expiry.status_code == 400
    assert "expirationDateTime is a required property" in no_expiry.json()["error"]["message"]
    past = api.create("users", hook.url(), minutes=-5)
    assert past.status_code == 400
    assert api.create("users/no-such-user/events", hook.url(), change="created").status_code == 404
    assert hook.validations == []  # nothing invalid reaches the handshake
    no_token = requests.post(f"{graph.base_url}/v1.0/subscriptions", json={}, verify=graph.ca_bundle, timeout=10)
    assert no_token.status_code == 401


def test_expiration_caps_per_resource(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    too_long = api.create(f"users/{user['id']}/events", hook.url(), change="created", minutes=4_231)
    assert too_long.status_code == 400
    assert too_long.json()["error"] == {**too_long.json()["error"], "code": "ExtensionError",
                                        "message": "Subscription expiration can only be 4230 minutes in the future."}
    assert api.create(f"users/{user['id']}/events", hook.url(), change="created", minutes=4_229).status_code == 201
    users_long = api.create("users", hook.url(), minutes=41_761)
    assert users_long.status_code == 400
    assert users_long.json()["error"]["message"] == "Subscription expiration can only be 41760 minutes in the future."
    assert api.create("users", hook.url(), minutes=41_759).status_code == 201


# ------------------------------------------------------------------ delivery

def test_user_update_and_delete_notify(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    sub = api.create("users", hook.url()).json()
    user = _user(graph, 1)
    graph.admin("PATCH", f"/users/{user['id']}", json={"displayName": "Renamed Person"})
    graph.admin("DELETE", f"/users/{user['id']}", params={"hard": "true"})
    items = hook.wait_for(2)
    assert [(i["changeType"], i["resourceData"]["id"]) for i in items] == [("updated", user["id"]),
                                                                            ("deleted", user["id"])]
    first = items[0]
    assert first["subscriptionId"] == sub["id"] and first["clientState"] == "s3cret-state"
    assert first["tenantId"] == graph.info["tenant_id"]
    assert first["resource"] == f"Users/{user['id']}"
    assert first["resourceData"]["@odata.type"] == "#Microsoft.Graph.User"
    assert first["subscriptionExpirationDateTime"] == sub["expirationDateTime"]


def test_contact_create_update_delete_notify(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    api.create(f"users/{user['id']}/contacts", hook.url(), change="created,updated,deleted")
    contact = graph.admin("POST", f"/users/{user['id']}/contacts", json={"displayName": "New Contact"}).json()
    _drain(graph)
    graph.admin("PATCH", f"/users/{user['id']}/contacts/{contact['id']}", json={"jobTitle": "Boss"})
    _drain(graph)
    graph.admin("DELETE", f"/users/{user['id']}/contacts/{contact['id']}")
    items = hook.wait_for(3)
    assert [i["changeType"] for i in items] == ["created", "updated", "deleted"]
    assert {i["resourceData"]["id"] for i in items} == {contact["restId"]}
    assert items[0]["resource"] == f"Users/{user['id']}/Contacts/{contact['restId']}"
    assert items[0]["resourceData"]["@odata.type"] == "#Microsoft.Graph.Contact"


def test_immutable_ids_when_preferred(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    api.create(f"users/{user['id']}/contacts", hook.url(), change="created",
               headers={"Prefer": 'IdType="ImmutableId"'})
    contact = graph.admin("POST", f"/users/{user['id']}/contacts", json={"displayName": "Immutable"}).json()
    [item] = hook.wait_for(1)
    assert item["resourceData"]["id"] == contact["id"] != contact["restId"]


def test_event_create_update_delete_notify_only_matching_types(graph: EmulatorHandle, hook: WebhookReceiver,
                                                                api: Api) -> None:
    user = _user(graph)
    other = _user(graph, 1)
    api.create(f"users/{user['id']}/events", hook.url(), change="created,deleted")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    body = {"subject": "Standup", "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (start + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}}
    event = graph.admin("POST", f"/users/{user['id']}/events", json=body).json()
    graph.admin("POST", f"/users/{other['id']}/events", json=body)  # another mailbox: not subscribed
    _drain(graph)
    graph.admin("PATCH", f"/users/{user['id']}/events/{event['id']}", json={"subject": "Moved"})  # not subscribed
    graph.admin("DELETE", f"/users/{user['id']}/events/{event['id']}")
    _drain(graph)
    items = hook.notifications()
    assert [(i["changeType"], i["resourceData"]["id"]) for i in items] == [("created", event["id"]),
                                                                            ("deleted", event["id"])]
    assert items[0]["resource"] == f"Users/{user['id']}/Events/{event['id']}"


def test_automatic_replies_never_notify(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    for resource in ("users", f"users/{user['id']}/events", f"users/{user['id']}/contacts"):
        change = "updated,deleted" if resource == "users" else "created,updated,deleted"
        assert api.create(resource, hook.url(), change=change).status_code == 201
    graph.admin("PUT", f"/users/{user['id']}/automaticReplies", json={"status": "alwaysEnabled",
                                                                       "internalReplyMessage": "Away"})
    time.sleep(0.4)
    _drain(graph)
    assert hook.notifications() == [] and _log(graph) == []


def test_batching_puts_a_burst_in_one_post(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"batch_window": 0.5})
    api.create("users", hook.url())
    users = [_user(graph, i) for i in range(5)]
    for index, user in enumerate(users):
        graph.admin("PATCH", f"/users/{user['id']}", json={"jobTitle": f"Title {index}"})
    items = hook.wait_for(5)
    _drain(graph)
    assert [i["resourceData"]["id"] for i in items] == [u["id"] for u in users]
    assert len(hook.posts) == 1 and len(_log(graph)) == 1


def test_delete_stops_delivery(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    sub = api.create("users", hook.url()).json()
    assert api.call("DELETE", f"subscriptions/{sub['id']}").status_code == 204
    assert api.call("GET", f"subscriptions/{sub['id']}").status_code == 404
    assert api.call("DELETE", f"subscriptions/{sub['id']}").status_code == 404
    graph.admin("PATCH", f"/users/{_user(graph)['id']}", json={"jobTitle": "After delete"})
    time.sleep(0.4)
    _drain(graph)
    assert hook.notifications() == []


def test_retries_5xx_and_slow_answers_with_backoff(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"delivery_timeout": 0.5})
    api.create("users", hook.url())
    hook.behaviour.statuses = [503, 500]
    hook.behaviour.delays = [0.0, 0.0, 1.0]  # third attempt answers too late
    graph.admin("PATCH", f"/users/{_user(graph)['id']}", json={"jobTitle": "Retried"})
    hook.wait_for(2, timeout=15)
    _drain(graph)
    assert len(hook.notifications()) == 2  # the late 202 reached the receiver, the emulator retried anyway
    log = _log(graph)
    assert [e["status"] for e in log] == [503, 500, "timeout", 202]
    assert [e["attempt"] for e in log] == [1, 2, 3, 4]
    stats = graph.admin("GET", "/subscriptions").json()["subscriptions"][0]["stats"]
    assert stats["delivered"] == 1 and stats["failed_attempts"] == 3


def test_gives_up_after_max_attempts(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"max_attempts": 2})
    api.create("users", hook.url())
    hook.behaviour.statuses = [500, 500, 500]
    graph.admin("PATCH", f"/users/{_user(graph)['id']}", json={"jobTitle": "Lost"})
    _drain(graph)
    time.sleep(0.3)
    _drain(graph)
    assert [e["status"] for e in _log(graph)] == [500, 500, "discarded"]
