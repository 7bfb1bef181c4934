"""What the notification receiver does with a post from Microsoft Graph (framework-free).

Graph posts change notifications and lifecycle notifications to the URLs the subscriptions
name (learn.microsoft.com/graph/change-notifications-delivery-webhooks,
learn.microsoft.com/graph/change-notifications-lifecycle-events). The receiver is anonymous
(Graph sends no credential); every notification of a post must name a subscription this sync
created, carry that subscription's ``clientState`` (compared in constant time with
:func:`hmac.compare_digest` against the SHA-256 kept in staging; the secret itself is never
stored) and its tenant. One failing notification rejects the whole post and nothing is stored.

Nothing of the payload is trusted beyond "something changed for user X / mailbox Y": the mailbox
of a contacts or events notification is the one of *our* subscription row, never the resource
path of the post; a users notification only says "run the users delta". Accepted notifications
become ``push_queue`` rows (deduplicated, replays by notification id refused) and the answer is
202 right away; the event-driven DAG does the work.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from m365_3cx.staging import push as store

__all__ = [
    "LIFECYCLE_EVENTS",
    "MAX_NOTIFICATIONS",
    "MAX_VALIDATION_TOKEN",
    "Verdict",
    "accept_lifecycle",
    "accept_notifications",
    "validation_token",
]

log = logging.getLogger(__name__)

#: Lifecycle events Graph sends (learn.microsoft.com/graph/change-notifications-lifecycle-events).
LIFECYCLE_EVENTS: Final = ("reauthorizationRequired", "subscriptionRemoved", "missed")
#: Most notifications one post may carry (Graph batches; anything larger is not Graph).
MAX_NOTIFICATIONS: Final = 1000
#: Longest validation token echoed (Graph's are a few hundred characters).
MAX_VALIDATION_TOKEN: Final = 2048
_MAX_ID: Final = 200


@dataclass(frozen=True)
class Verdict:
    """The receiver's answer: HTTP status, reason code (``accepted``, ``client_state``, ...) and detail."""

    status: int
    reason: str
    detail: str
    queued: int = 0
    duplicates: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"status": self.reason, "detail": self.detail, "queued": self.queued, "duplicates": self.duplicates}


def validation_token(token: str | None) -> str | None:
    """The token to echo for a validation request, or ``None`` when it is not one we answer.

    Graph sends ``?validationToken=...`` (already URL-decoded by the framework) and expects it back
    as ``text/plain`` with 200 within 10 seconds.
    """
    if token is None or not token or len(token) > MAX_VALIDATION_TOKEN or not token.isprintable():
        return None
    return token


def _short_str(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID and value.isprintable():
        return value
    return None


def _items(body: Any) -> list[Mapping[str, Any]] | Verdict:
    if not isinstance(body, Mapping) or not isinstance(body.get("value"), list) or not body["value"]:
        return Verdict(400, "bad_request", "expected a JSON object with a non-empty 'value' array")
    items = body["value"]
    if len(items) > MAX_NOTIFICATIONS:
        return Verdict(400, "bad_request", f"more than {MAX_NOTIFICATIONS} notifications in one post")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            return Verdict(400, "bad_request", f"value[{index}] is not an object")
        for key in ("subscriptionId", "clientState", "tenantId"):
            if _short_str(item.get(key)) is None:
                return Verdict(400, "bad_request", f"value[{index}].{key} is missing or not a short string")
    return items


def _authenticate(conn: Any, items: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]] | Verdict:
    """The subscription of every item, or the verdict rejecting the post."""
    ids = {str(item["subscriptionId"]) for item in items}
    known = store.subscriptions_by_id(conn, ids)
    for index, item in enumerate(items):
        subscription = known.get(str(item["subscriptionId"]))
        if subscription is None:
            return Verdict(404, "unknown_subscription", f"value[{index}]: not a subscription of this sync")
        digest = store.client_state_digest(str(item["clientState"]))
        if not hmac.compare_digest(digest, str(subscription["client_state_sha256"])):
            return Verdict(403, "client_state", f"value[{index}]: clientState does not match its subscription")
        if not hmac.compare_digest(str(item["tenantId"]).lower(), str(subscription["tenant_id"]).lower()):
            return Verdict(403, "tenant", f"value[{index}]: tenantId is not this sync's tenant")
    return known


def _reject(conn: Any, verdict: Verdict, now: datetime) -> Verdict:
    store.record_rejection(conn, verdict.reason, now)
    log.warning("change notification post rejected (%d %s): %s", verdict.status, verdict.reason, verdict.detail)
    return verdict


def _changed_user(item: Mapping[str, Any]) -> str | None:
    """The id a users notification names (informative only: the users delta reads every change)."""
    data = item.get("resourceData")
    return _short_str(data.get("id")) if isinstance(data, Mapping) else None


def accept_notifications(conn: Any, body: Any, now: datetime) -> Verdict:
    """Check a change-notification post and queue what it announces (in the caller's transaction).

    :return: 202 ``accepted`` (some queued, exact duplicates dropped); 400 malformed; 404 unknown
        subscription; 403 wrong clientState or tenant; 409 a replay (every notification id already
        received). Only a 202 changes anything besides the rejection counters.
    """
    items = _items(body)
    if isinstance(items, Verdict):
        return _reject(conn, items, now)
    known = _authenticate(conn, items)
    if isinstance(known, Verdict):
        return _reject(conn, known, now)
    ids = [nid for nid in (_short_str(item.get("id")) for item in items) if nid]
    seen = store.known_notification_ids(conn, ids)
    if len(ids) == len(items) and all(nid in seen for nid in ids):
        return _reject(conn, Verdict(409, "replay", "every notification of this post was received before"), now)
    entries: list[dict[str, Any]] = []
    keys: set[tuple[Any, ...]] = set()
    duplicates = 0
    for item in items:
        nid = _short_str(item.get("id"))
        subscription = known[str(item["subscriptionId"])]
        kind = subscription["purpose"]
        user = _changed_user(item) if kind == "users" else subscription["user_id"]
        key = (nid,) if nid else (kind, user, subscription["subscription_id"])
        if (nid and nid in seen) or key in keys:
            duplicates += 1
            continue
        keys.add(key)
        entries.append({"kind": kind, "user_id": user, "subscription_id": subscription["subscription_id"],
                        "source": "notification", "notification_id": nid})
    queued = store.enqueue(conn, entries, now)
    store.update_subscriptions(conn, set(known), last_notification_at=now)
    return Verdict(202, "accepted", f"{queued} queued", queued=queued, duplicates=duplicates)


def accept_lifecycle(conn: Any, body: Any, now: datetime) -> Verdict:
    """Check a lifecycle-notification post and act on it (in the caller's transaction).

    ``reauthorizationRequired`` marks the subscription for renewal by the lifecycle DAG;
    ``subscriptionRemoved`` marks it for re-creation and queues a catch-up delta of its scope;
    ``missed`` queues a catch-up delta of its scope. Same checks and statuses as
    :func:`accept_notifications` (no replay check: every event is idempotent).
    """
    items = _items(body)
    if isinstance(items, Verdict):
        return _reject(conn, items, now)
    for index, item in enumerate(items):
        if item.get("lifecycleEvent") not in LIFECYCLE_EVENTS:
            return _reject(conn, Verdict(400, "bad_request", f"value[{index}].lifecycleEvent is not one of "
                                         f"{', '.join(LIFECYCLE_EVENTS)}"), now)
    known = _authenticate(conn, items)
    if isinstance(known, Verdict):
        return _reject(conn, known, now)
    entries: list[dict[str, Any]] = []
    for item in items:
        subscription = known[str(item["subscriptionId"])]
        event = str(item["lifecycleEvent"])
        values: dict[str, Any] = {"last_lifecycle_event": event, "last_lifecycle_at": now}
        if event == "reauthorizationRequired":
            values["status"] = "reauthorize"
        elif event == "subscriptionRemoved":
            values["status"] = "removed"
        if event != "reauthorizationRequired":
            entries.append({"kind": subscription["purpose"], "user_id": subscription["user_id"],
                            "subscription_id": subscription["subscription_id"], "source": event})
        store.update_subscriptions(conn, [subscription["subscription_id"]], **values)
        log.info("lifecycle event %s for the %s subscription %s", event, subscription["purpose"],
                 subscription["subscription_id"])
    queued = store.enqueue(conn, entries, now)
    return Verdict(202, "accepted", f"{len(items)} lifecycle event(s), {queued} catch-up(s) queued", queued=queued)
