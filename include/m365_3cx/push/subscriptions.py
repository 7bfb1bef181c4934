"""The subscription lifecycle: keep exactly the Graph subscriptions the settings call for.

One ``/users`` subscription (Graph allows 100 user subscriptions per app and tenant, so never one
per user), plus, per in-scope mailbox, one ``/users/{id}/contacts`` subscription when the contacts
feature is on and one ``/users/{id}/events`` subscription when the presence feature is on (Outlook
quotas are per mailbox). :func:`reconcile`, run by the ``m365_3cx_subscriptions`` DAG:

* re-creates the subscriptions Graph no longer lists (expired, or ``subscriptionRemoved``) and
  queues a catch-up delta of their scope (the gap may have lost notifications);
* renews those expiring within ``push.renew_margin_minutes`` and those Graph asked to
  re-authorize (``reauthorizationRequired``) with ``PATCH expirationDateTime``;
* creates the missing ones and deletes those whose user left scope, whose feature was turned off
  or all of them when ``push.enabled`` is false, and Graph's subscriptions to our URL we hold no
  secret for.

Creates, renewals and deletions go through ``$batch``. Subscriptions need only the read
permission of their resource (``User.Read.All``, ``Contacts.Read``, ``Calendars.Read``), which the
sync already has (learn.microsoft.com/graph/api/subscription-post-subscriptions, Permissions).
The ``clientState`` of each subscription is a fresh random secret; staging keeps only its SHA-256.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from m365_3cx.staging import push as store

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.client import GraphClient
    from m365_3cx.settings import Settings

__all__ = ["MAX_MINUTES", "Desired", "desired_subscriptions", "reconcile"]

log = logging.getLogger(__name__)

#: Longest lifetime Graph grants per purpose, minutes (users: 41,760; Outlook items: 4,230 in the
#: subscription resource docs — Microsoft has since raised Outlook to 10,080; the lower cap is valid
#: under both). learn.microsoft.com/graph/api/resources/subscription#subscription-lifetime
MAX_MINUTES: Final = {"users": 41_760, "contacts": 4_230, "events": 4_230}
#: changeType per purpose: users support only updated,deleted (graph.md §8).
CHANGE_TYPES: Final = {"users": "updated,deleted", "contacts": "created,updated,deleted",
                       "events": "created,updated,deleted"}
_SKEW: Final = timedelta(minutes=5)


@dataclass(frozen=True)
class Desired:
    """A subscription the settings call for."""

    purpose: str
    user_id: str | None
    resource: str

    @property
    def key(self) -> tuple[str, str | None]:
        return self.purpose, self.user_id


def desired_subscriptions(conn: Any, settings: Settings) -> list[Desired]:
    """The subscriptions the settings and the staged, in-scope users call for (none when push is off)."""
    from m365_3cx.staging import contacts as crepo
    from m365_3cx.staging import presence as stage

    if not settings.push.enabled:
        return []
    wanted = [Desired("users", None, "users")]
    if settings.contacts.personal_contacts != "off":
        for shard in crepo.shard_descriptors(conn, 5000, settings.scope.include_guests):
            for user in crepo.shard_users(conn, shard["first"], shard["last"], settings.scope.include_guests):
                wanted.append(Desired("contacts", user["user_id"], f"users/{user['user_id']}/contacts"))
    if settings.presence.enabled:
        for user in stage.presence_users(conn, with_mailbox_only=True):
            wanted.append(Desired("events", user.user_id, f"users/{user.user_id}/events"))
    return wanted


def _expiry(purpose: str, now: datetime) -> datetime:
    return now + timedelta(minutes=MAX_MINUTES[purpose]) - _SKEW


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _parse_time(value: Any, default: datetime) -> datetime:
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return default
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _error(response: Any) -> str:
    from m365_3cx.graph.batch import classify_item

    error = classify_item(response)
    return f"HTTP {response.status}: {error}" if error is not None else f"HTTP {response.status}"


def reconcile(engine: Engine, graph: GraphClient, settings: Settings, run_key: str, now: datetime) -> dict[str, int]:
    """Bring the Graph subscriptions in line with the settings (see the module docstring).

    :return: counts: desired, created, renewed, deleted, recreated (gaps), failed, catchups queued.
    """
    from m365_3cx.graph.batch import BatchRequest, execute_batch
    from m365_3cx.transform.notes import ERROR, Note, note_rows

    push = settings.push
    counts = dict.fromkeys(("desired", "created", "renewed", "deleted", "recreated", "failed", "catchups"), 0)
    remote = [item for page in graph.iter_pages("/subscriptions") for item in page.items]
    remote_ids = {str(item.get("id")) for item in remote}
    with engine.connect() as conn:
        stored = store.load_subscriptions(conn)
        wanted = desired_subscriptions(conn, settings)
    counts["desired"] = len(wanted)
    wanted_keys = {w.key for w in wanted}
    stored_ids = {row["subscription_id"] for row in stored}

    gaps = [row for row in stored
            if row["subscription_id"] not in remote_ids or row["status"] in ("removed", "missing")]
    gap_ids = {row["subscription_id"] for row in gaps}
    leaving = [row for row in stored
               if (row["purpose"], row["user_id"]) not in wanted_keys and row["subscription_id"] not in gap_ids]
    leaving_ids = {row["subscription_id"] for row in leaving}
    ours = {u for u in (push.notification_url, push.lifecycle_url) if u}
    orphans = [str(item["id"]) for item in remote
               if str(item.get("id")) not in stored_ids and item.get("notificationUrl") in ours]
    to_delete = [row["subscription_id"] for row in leaving if row["subscription_id"] in remote_ids] + orphans
    to_delete += [row["subscription_id"] for row in gaps if row["subscription_id"] in remote_ids]
    margin = timedelta(minutes=push.renew_margin_minutes)
    dropped = gap_ids | leaving_ids
    keep = [row for row in stored if row["subscription_id"] not in dropped]
    to_renew = [row for row in keep if row["status"] == "reauthorize" or row["expires_at"] - now <= margin]
    held = {(row["purpose"], row["user_id"]) for row in keep}
    to_create = [w for w in wanted if w.key not in held]

    notes: list[Note] = []
    requests: list[BatchRequest] = []
    for sid in to_delete:
        requests.append(BatchRequest(f"d-{sid}"[:100], f"/subscriptions/{sid}", "DELETE"))
    for row in to_renew:
        requests.append(BatchRequest(f"r-{row['subscription_id']}"[:100], f"/subscriptions/{row['subscription_id']}",
                                     "PATCH", body={"expirationDateTime": _iso(_expiry(row["purpose"], now))}))
    client_states: dict[str, str] = {}
    by_request: dict[str, Desired] = {}
    for index, want in enumerate(to_create):
        rid = f"c-{index}"
        client_states[rid] = secrets.token_urlsafe(48)  # 64 characters; Graph allows 128
        by_request[rid] = want
        requests.append(BatchRequest(rid, "/subscriptions", "POST", body={
            "changeType": CHANGE_TYPES[want.purpose], "notificationUrl": push.notification_url,
            "lifecycleNotificationUrl": push.lifecycle_url, "resource": want.resource,
            "expirationDateTime": _iso(_expiry(want.purpose, now)), "clientState": client_states[rid],
        }))
    answers = execute_batch(graph, requests, max_per_mailbox=20) if requests else {}

    tenant = graph.credentials.tenant_id
    with engine.begin() as conn:
        store.delete_subscriptions(conn, gap_ids | leaving_ids | set(orphans))
        counts["deleted"] = len(leaving) + len(orphans)
        counts["recreated"] = len(gaps)
        catchups = [{"kind": row["purpose"], "user_id": row["user_id"], "subscription_id": row["subscription_id"],
                     "source": "gap"} for row in gaps if (row["purpose"], row["user_id"]) in wanted_keys]
        counts["catchups"] = store.enqueue(conn, catchups, now)
        for row in to_renew:
            answer = answers.get(f"r-{row['subscription_id']}"[:100])
            sid = row["subscription_id"]
            if answer is not None and answer.ok:
                body = answer.body if isinstance(answer.body, Mapping) else {}
                store.update_subscriptions(conn, [sid], status="active", renewed_at=now, last_error=None,
                                           expires_at=_parse_time(body.get("expirationDateTime"),
                                                                  _expiry(row["purpose"], now)))
                counts["renewed"] += 1
            elif answer is not None and answer.status == 404:  # gone meanwhile: re-created next run
                store.update_subscriptions(conn, [sid], status="missing", last_error=_error(answer))
                counts["failed"] += 1
            else:
                message = _error(answer) if answer is not None else "no answer"
                store.update_subscriptions(conn, [sid], last_error=message)
                counts["failed"] += 1
                notes.append(Note("subscription", sid, row["resource"], "expirationDateTime", ERROR,
                                  f"subscription {sid} ({row['resource']}): renewal failed: {message}"))
        for rid, want in by_request.items():
            answer = answers.get(rid)
            body = answer.body if answer is not None and isinstance(answer.body, Mapping) else {}
            if answer is None or not answer.ok or not body.get("id"):
                message = _error(answer) if answer is not None else "no answer"
                counts["failed"] += 1
                notes.append(Note("subscription", want.user_id or "users", want.resource, "notificationUrl", ERROR,
                                  f"subscription for {want.resource}: creation failed: {message}"))
                continue
            store.save_subscription(conn, {
                "subscription_id": str(body["id"]), "purpose": want.purpose, "user_id": want.user_id,
                "resource": want.resource, "client_state_sha256": store.client_state_digest(client_states[rid]),
                "tenant_id": tenant, "status": "active", "created_at": now,
                "expires_at": _parse_time(body.get("expirationDateTime"), _expiry(want.purpose, now)),
            })
            counts["created"] += 1
        if notes:
            from m365_3cx.staging.runs import add_notes

            add_notes(conn, run_key, note_rows(notes, run_key, now), step="subscriptions", now=now)
    client_states.clear()
    log.info("subscriptions: %d desired, %d created, %d renewed, %d deleted, %d re-created after a gap "
             "(%d catch-up deltas queued), %d failed", counts["desired"], counts["created"], counts["renewed"],
             counts["deleted"], counts["recreated"], counts["catchups"], counts["failed"])
    return counts
