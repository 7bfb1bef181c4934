"""Change notifications over real HTTPS: subscriptions, the handshake, delivery, lifecycle, faults."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.common.handle import EmulatorHandle
from tests.emulators.graph.conftest import GraphCaller
from tests.emulators.graph.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
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
    assert listed[0]["clientState"] is None  # "not returned for security purposes"
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
    assert created.status_code == 400
    assert created.json()["error"]["message"] == "Invalid 'changeType' attribute: 'created'."
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
    graph.admin("PUT", "/subscriptions/config", json={"batch_window": 1.0})
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
    graph.admin("PUT", "/subscriptions/config", json={"delivery_timeout": 1.0})
    api.create("users", hook.url())
    hook.behaviour.statuses = [503, 500]
    hook.behaviour.delays = [0.0, 0.0, 2.0]  # third attempt answers too late
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


def test_slow_receiver_does_not_hold_other_urls(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    api.create("users", hook.url("slow"))
    api.create(f"users/{user['id']}/contacts", hook.url("fast?tag=1"), change="created")
    hook.behaviour.delays = [2.0]
    graph.admin("PATCH", f"/users/{user['id']}", json={"jobTitle": "Slow path"})
    time.sleep(0.3)  # the users POST is in flight, answering slowly
    started = time.monotonic()
    graph.admin("POST", f"/users/{user['id']}/contacts", json={"displayName": "Fast path"})
    assert len(hook.wait_for(1, path="/fast")) == 1
    assert time.monotonic() - started < 1.5
    assert [p["query"] for p in hook.posts if p["path"] == "/fast"] == ["tag=1"]  # the URL's query is kept
    _drain(graph)


# ------------------------------------------------------------------ renew, reauthorize, permissions, quotas

def test_renew_with_patch(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    sub = api.create(f"users/{user['id']}/events", hook.url(), change="created", minutes=30).json()
    renewed = api.call("PATCH", f"subscriptions/{sub['id']}", json={"expirationDateTime": _in(4_000)})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["expirationDateTime"] > sub["expirationDateTime"]
    assert api.call("GET", f"subscriptions/{sub['id']}").json()["expirationDateTime"] == \
        renewed.json()["expirationDateTime"]
    too_far = api.call("PATCH", f"subscriptions/{sub['id']}", json={"expirationDateTime": _in(4_300)})
    assert too_far.status_code == 400 and "4230 minutes" in too_far.json()["error"]["message"]
    assert api.call("PATCH", f"subscriptions/{sub['id']}", json={"resource": "users"}).status_code == 400
    moved = api.call("PATCH", f"subscriptions/{sub['id']}", json={"notificationUrl": hook.url("moved")})
    assert moved.status_code == 200 and moved.json()["notificationUrl"] == hook.url("moved")
    assert hook.validations[-1]["path"] == "/moved"
    assert api.call("PATCH", "subscriptions/nope", json={"expirationDateTime": _in(60)}).status_code == 404


def test_reauthorization_required_blocks_until_reauthorized(graph: EmulatorHandle, hook: WebhookReceiver,
                                                            api: Api) -> None:
    sub = api.create("users", hook.url(), lifecycleNotificationUrl=hook.url("lifecycle")).json()
    fired = graph.admin("POST", f"/subscriptions/{sub['id']}/lifecycle",
                        json={"event": "reauthorizationRequired", "block": True})
    assert fired.json()["event"] == "reauthorizationRequired"
    [notice] = hook.wait_for(1, path="/lifecycle")
    assert notice == {"subscriptionId": sub["id"], "subscriptionExpirationDateTime": sub["expirationDateTime"],
                      "tenantId": graph.info["tenant_id"], "clientState": "s3cret-state",
                      "lifecycleEvent": "reauthorizationRequired"}
    user = _user(graph)
    graph.admin("PATCH", f"/users/{user['id']}", json={"jobTitle": "While blocked"})
    time.sleep(0.3)
    _drain(graph)
    assert hook.notifications() == []  # lost, as Graph documents: the app catches up by delta
    assert api.call("POST", f"subscriptions/{sub['id']}/reauthorize").status_code == 204
    graph.admin("PATCH", f"/users/{user['id']}", json={"jobTitle": "After reauthorize"})
    assert len(hook.wait_for(1)) == 1
    [listed] = graph.admin("GET", "/subscriptions").json()["subscriptions"]
    assert listed["stats"]["lost_while_blocked"] == 1 and listed["reauthorizationRequired"] is False


def test_missing_permission(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    sub = api.create(f"users/{user['id']}/contacts", hook.url(), change="created",
                     lifecycleNotificationUrl=hook.url("lifecycle")).json()
    revoked = graph.admin("PUT", "/subscriptions/permissions", json={"granted": ["User.Read.All"]}).json()
    assert revoked["blocked"] == [sub["id"]]
    assert hook.wait_for(1, path="/lifecycle")[0]["lifecycleEvent"] == "reauthorizationRequired"
    denied = api.create(f"users/{user['id']}/events", hook.url(), change="created")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ExtensionError"
    assert api.call("POST", f"subscriptions/{sub['id']}/reauthorize").status_code == 403
    assert api.call("GET", f"subscriptions/{sub['id']}").status_code == 403
    graph.admin("PUT", "/subscriptions/permissions", json={"granted": ["User.Read.All", "Contacts.ReadWrite"]})
    assert api.call("POST", f"subscriptions/{sub['id']}/reauthorize").status_code == 403  # write != read
    graph.admin("PUT", "/subscriptions/permissions", json={"granted": ["User.Read.All", "Contacts.Read"]})
    assert api.call("POST", f"subscriptions/{sub['id']}/reauthorize").status_code == 204
    assert api.create("users", hook.url()).status_code == 201


def test_users_quota_is_100_per_app_and_tenant(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    for _ in range(100):
        assert api.create("users", hook.url()).status_code == 201
    refused = api.create(f"users/{user['id']}", hook.url())
    assert refused.status_code == 403
    assert "100" in refused.json()["error"]["message"] and refused.json()["error"]["code"] == "ExtensionError"
    assert api.create(f"users/{user['id']}/events", hook.url(), change="created").status_code == 201  # Outlook


def test_outlook_quota_is_per_mailbox(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"quota_mailbox": 2})  # Graph: 1,000
    first, second = _user(graph), _user(graph, 1)
    assert api.create(f"users/{first['id']}/events", hook.url(), change="created").status_code == 201
    assert api.create(f"users/{first['id']}/contacts", hook.url(), change="created").status_code == 201
    assert api.create(f"users/{first['id']}/events", hook.url(), change="deleted").status_code == 403
    assert api.create(f"users/{second['id']}/events", hook.url(), change="created").status_code == 201


# ------------------------------------------------------------------ lifecycle and expiry

def test_missed_and_subscription_removed(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph)
    events = api.create(f"users/{user['id']}/events", hook.url(), change="created",
                        lifecycleNotificationUrl=hook.url("lifecycle")).json()
    users = api.create("users", hook.url(), lifecycleNotificationUrl=hook.url("lifecycle")).json()
    graph.admin("POST", f"/subscriptions/{events['id']}/lifecycle", json={"event": "missed"})
    graph.admin("POST", f"/subscriptions/{events['id']}/lifecycle", json={"event": "subscriptionRemoved"})
    notices = hook.wait_for(2, path="/lifecycle")
    assert [(n["subscriptionId"], n["lifecycleEvent"]) for n in notices] == [(events["id"], "missed"),
                                                                              (events["id"], "subscriptionRemoved")]
    assert api.call("GET", f"subscriptions/{events['id']}").status_code == 404
    for event in ("missed", "subscriptionRemoved"):  # documented for Outlook resources only
        response = requests.post(f"{graph.base_url}/_emulator/subscriptions/{users['id']}/lifecycle",
                                 json={"event": event}, verify=graph.ca_bundle, timeout=10)
        assert response.status_code == 400
    no_url = api.create("users", hook.url()).json()
    response = requests.post(f"{graph.base_url}/_emulator/subscriptions/{no_url['id']}/lifecycle",
                             json={"event": "reauthorizationRequired"}, verify=graph.ca_bundle, timeout=10)
    assert response.status_code == 400


def test_deleted_user_loses_mailbox_subscriptions(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    user = _user(graph, 2)
    sub = api.create(f"users/{user['id']}/contacts", hook.url(), change="created",
                     lifecycleNotificationUrl=hook.url("lifecycle")).json()
    users_sub = api.create("users", hook.url()).json()
    graph.admin("DELETE", f"/users/{user['id']}")  # soft delete
    [notice] = hook.wait_for(1, path="/lifecycle")
    assert notice["lifecycleEvent"] == "subscriptionRemoved" and notice["subscriptionId"] == sub["id"]
    [item] = hook.wait_for(1)
    assert item["subscriptionId"] == users_sub["id"] and item["changeType"] == "updated"  # soft delete = updated
    assert [s["id"] for s in api.call("GET", "subscriptions").json()["value"]] == [users_sub["id"]]


def test_discarded_outlook_notifications_raise_missed(graph: EmulatorHandle, hook: WebhookReceiver,
                                                      api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"max_attempts": 1})
    user = _user(graph)
    sub = api.create(f"users/{user['id']}/contacts", hook.url(), change="created",
                     lifecycleNotificationUrl=hook.url("lifecycle")).json()
    hook.behaviour.statuses = [500]
    graph.admin("POST", f"/users/{user['id']}/contacts", json={"displayName": "Lost"})
    [notice] = hook.wait_for(1, path="/lifecycle")
    assert notice["lifecycleEvent"] == "missed" and notice["subscriptionId"] == sub["id"]


def test_expired_subscriptions_disappear_and_stop(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    expiring = api.create("users", hook.url(), minutes=2.5 / 60).json()  # 2.5 seconds
    expired_by_admin = api.create("users", hook.url()).json()
    graph.admin("POST", f"/subscriptions/{expired_by_admin['id']}/expire")
    assert api.call("GET", f"subscriptions/{expired_by_admin['id']}").status_code == 404
    assert api.call("GET", f"subscriptions/{expiring['id']}").status_code == 200
    time.sleep(2.6)
    assert api.call("GET", f"subscriptions/{expiring['id']}").status_code == 404
    assert api.call("GET", "subscriptions").json()["value"] == []
    graph.admin("PATCH", f"/users/{_user(graph)['id']}", json={"jobTitle": "Nobody listens"})
    time.sleep(0.3)
    _drain(graph)
    assert hook.notifications() == []


# ------------------------------------------------------------------ delivery faults

def _bump(graph: EmulatorHandle, count: int) -> list[str]:
    ids = []
    for index in range(count):
        user = _user(graph, index)
        graph.admin("PATCH", f"/users/{user['id']}", json={"jobTitle": f"Fault {index} {time.monotonic()}"})
        ids.append(user["id"])
    return ids


def test_fault_delay(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    api.create("users", hook.url())
    graph.admin("PUT", "/subscriptions/faults", json={"delay": 1.0})
    started = time.monotonic()
    _bump(graph, 1)
    assert len(hook.wait_for(1)) == 1
    assert time.monotonic() - started >= 1.0


def test_fault_drop_next(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    api.create("users", hook.url())
    graph.admin("PUT", "/subscriptions/faults", json={"drop": 1})
    ids = _bump(graph, 3)
    _drain(graph)
    time.sleep(0.3)
    _drain(graph)
    assert [i["resourceData"]["id"] for i in hook.notifications()] == ids[1:]
    assert [e["status"] for e in _log(graph)] == ["dropped", 202]
    assert graph.admin("GET", "/subscriptions/faults").json()["drop"] == 0  # used up


def test_fault_drop_fraction(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    api.create("users", hook.url())
    graph.admin("PUT", "/subscriptions/faults", json={"drop_fraction": 1.0})
    _bump(graph, 2)
    time.sleep(0.3)
    _drain(graph)
    assert hook.notifications() == []
    assert graph.admin("GET", "/subscriptions").json()["subscriptions"][0]["stats"]["dropped"] == 2


def test_fault_duplicate(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    api.create("users", hook.url())
    graph.admin("PUT", "/subscriptions/faults", json={"duplicate": 1})
    ids = _bump(graph, 1)
    hook.wait_for(2)
    _drain(graph)
    assert [i["resourceData"]["id"] for i in hook.notifications()] == ids * 2
    assert len(hook.posts) == 2


def test_fault_reorder(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    graph.admin("PUT", "/subscriptions/config", json={"batch_window": 1.0})
    api.create("users", hook.url())
    graph.admin("PUT", "/subscriptions/faults", json={"reorder": True})
    ids = _bump(graph, 3)
    hook.wait_for(3)
    assert [i["resourceData"]["id"] for i in hook.notifications()] == list(reversed(ids))
    graph.admin("DELETE", "/subscriptions/faults")
    assert graph.admin("GET", "/subscriptions/faults").json()["reorder"] is False


def test_pause_holds_then_resume_flushes(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    api.create("users", hook.url())
    graph.admin("POST", "/subscriptions/pause")
    ids = _bump(graph, 2)
    time.sleep(0.5)
    assert hook.notifications() == []
    assert graph.admin("POST", "/subscriptions/drain", json={"timeout": 0.2}).json()["ok"] is False
    assert graph.admin("GET", "/subscriptions").json()["queued_posts"] == 1
    graph.admin("POST", "/subscriptions/resume")
    assert [i["resourceData"]["id"] for i in hook.wait_for(2)] == ids


def test_admin_rejects_bad_knobs(graph: EmulatorHandle, hook: WebhookReceiver) -> None:
    def put(path: str, body: dict[str, Any]) -> int:
        return requests.put(f"{graph.base_url}/_emulator/subscriptions/{path}", json=body,
                            verify=graph.ca_bundle, timeout=10).status_code

    assert put("faults", {"drop_fraction": 2}) == 400
    assert put("faults", {"explode": True}) == 400
    assert put("config", {"batch_window": -1}) == 400
    assert put("config", {"nope": 1}) == 400
    assert put("permissions", {"granted": "User.Read.All"}) == 400
    missing = requests.post(f"{graph.base_url}/_emulator/subscriptions/nope/expire", verify=graph.ca_bundle,
                            timeout=10)
    assert missing.status_code == 404
    graph.admin("PUT", "/subscriptions/permissions", json={"granted": []})
    graph.admin("POST", "/reset")  # back to the start-up settings, faults and permissions
    state = graph.admin("GET", "/subscriptions").json()
    assert state["config"]["batch_window"] == 0.2 and state["config"]["retry_base"] == 1.0
    assert "User.Read.All" in state["granted"] and state["faults"]["drop"] == 0


# ------------------------------------------------------------------ how the product calls it; the CLI

def test_create_through_batch(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    users = [_user(graph, i) for i in range(3)]
    def create(index: int, user: dict[str, Any]) -> dict[str, Any]:
        body = {"changeType": "created,updated,deleted", "notificationUrl": hook.url(),
                "resource": f"users/{user['id']}/contacts", "expirationDateTime": _in(4_000),
                "clientState": f"state-{index}"}
        return {"id": f"c-{index}", "method": "POST", "url": "/subscriptions",
                "headers": {"Content-Type": "application/json"}, "body": body}

    requests_ = [create(i, u) for i, u in enumerate(users)]
    answer = api.call("POST", "$batch", json={"requests": requests_})
    assert answer.status_code == 200
    assert sorted(r["status"] for r in answer.json()["responses"]) == [201, 201, 201]
    assert len(hook.validations) == 3
    graph.admin("POST", f"/users/{users[2]['id']}/contacts", json={"displayName": "Via batch"})
    [item] = hook.wait_for(1)
    assert item["clientState"] == "state-2"


def test_guest_without_mailbox(graph: EmulatorHandle, hook: WebhookReceiver, api: Api) -> None:
    guest = next(u for u in graph.admin("GET", "/state").json()["users"] if u.get("userType") == "Guest")
    response = api.create(f"users/{guest['id']}/events", hook.url(), change="created")
    assert response.status_code == 404 and response.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"
    assert api.create(f"users/{guest['id']}", hook.url()).status_code == 201  # the directory user exists


def test_cli_trusts_the_given_ca_bundle(tmp_path: Path, receiver: WebhookReceiver) -> None:
    receiver.reset()
    ca = tmp_path / "receiver-ca.pem"
    ca.write_text(receiver.ca_pem)
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.graph", "--port", "0", "--tls-dir", str(tmp_path / "tls"), "--users", "5",
         "--outgoing-ca-bundle", str(ca), "--delivery-batch-window", "0.05", "--delivery-retry-base", "0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        token = requests.post(f"{info['authority']}/oauth2/v2.0/token", verify=info["ca_bundle"], timeout=10, data={
            "grant_type": "client_credentials", "client_id": info["client_id"], "client_secret": info["client_secret"],
            "scope": "https://graph.microsoft.com/.default"}).json()["access_token"]
        created = requests.post(f"{info['graph_url']}/v1.0/subscriptions", verify=info["ca_bundle"], timeout=30,
                                headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                                json={"changeType": "updated", "notificationUrl": receiver.url("cli"),
                                      "resource": "users", "expirationDateTime": _in(60)})
        assert created.status_code == 201, created.text
        settings = requests.get(f"{info['graph_url']}/_emulator/subscriptions", verify=info["ca_bundle"],
                                timeout=10, headers={"Connection": "close"}).json()["config"]
        assert settings["batch_window"] == 0.05 and settings["retry_base"] == 0.1
        assert [v["path"] for v in receiver.validations] == ["/cli"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
