"""Provision on demand: the ``only_users`` steps and the per-user step trace (``sync_trace``).

A run triggered with ``only_users`` (UPNs, Graph ids or extension numbers) reads just those users
from Graph, runs the whole chain for them only (extension, their mailboxes' contacts, their
status) and records each user's way through it: resolve, read, scope, match, plan, apply, then
contacts, phonebook and status. The users' delta link is not followed (the next delta run still
sees every change), and the run is recorded with mode ``on_demand`` so it never counts as the
run that carried other users' changes.

Entries that match nobody (not staged, not in Graph, no such extension number) are named in the
log and recorded as ``resolve``/``unknown`` trace rows; when no entry is known the step raises.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import sqlalchemy as sa

from m365_3cx.errors import FatalError
from m365_3cx.staging import trace as tr
from m365_3cx.staging.schema import extension_map, stg_users, sync_plan, sync_runs, tgt_extensions
from m365_3cx.staging.users import GRAPH_USER_SELECT, mark_users_deleted, user_row_from_graph

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.client import GraphClient
    from m365_3cx.settings import Settings

log = logging.getLogger(__name__)

ON_DEMAND_MODE: Final = "on_demand"
#: Key fields of the ``read`` step (what Entra's provisioning log shows; no phone numbers).
READ_FIELDS: Final = ("displayName", "mail", "accountEnabled", "userType")
_DIGITS = re.compile(r"^\d{1,32}$")


class UnknownUsersError(FatalError):
    """No ``only_users`` entry matched a user: the on-demand run has nothing to do."""


def parse_entries(only_users: Iterable[Any] | None) -> list[str]:
    """The ``only_users`` param as a list of distinct, stripped entries, in the order given."""
    seen: dict[str, str] = {}
    for raw in only_users or []:
        if raw is None:
            continue
        entry = str(raw).strip()
        if entry and entry.lower() not in seen:
            seen[entry.lower()] = entry
    return list(seen.values())


def _graph_get_users(graph: GraphClient, keys: list[str]) -> dict[str, dict[str, Any] | None]:
    """``GET /users/{key}`` for each key, batched (20 per ``$batch``): key -> user, or None when 404."""
    from m365_3cx.graph.batch import BatchRequest, classify_item, execute_batch

    select = ",".join(GRAPH_USER_SELECT)
    requests = [BatchRequest(id=str(i), url=f"/users/{quote(key, safe='@')}?$select={select}")
                for i, key in enumerate(keys)]
    responses = execute_batch(graph, requests) if requests else {}
    found: dict[str, dict[str, Any] | None] = {}
    for i, key in enumerate(keys):
        response = responses[str(i)]
        if response.status == 404:
            found[key] = None
            continue
        error = classify_item(response)
        if error is not None:
            raise error
        found[key] = dict(response.body) if isinstance(response.body, Mapping) else None
    return found


def extract_on_demand(
    engine: Engine, graph: GraphClient, settings: Settings, run_key: str, only_users: Iterable[Any], now: datetime
) -> dict[str, Any]:
    """Resolve the entries, read those users from Graph into ``stg_users`` and trace both steps.

    An entry is matched, in order, as an extension number (``extension_map``), a staged Graph id
    or UPN, then read from Graph by id or UPN (so a user created minutes ago is found). A staged
    user Graph no longer returns is marked deleted (the plan then applies the removal policy).

    :return: counts: entries, found, unknown, read, not_found, inserted, updated, deleted.
    :raises UnknownUsersError: no entry matched anybody (the trace rows are committed first).
    :raises GraphRetriableError: Graph kept failing transiently (the task retries).
    """
    from m365_3cx.pipeline.users import _apply_scope, clean_users, stage_users_page

    entries = parse_entries(only_users)
    with engine.connect() as conn:
        staged = {uid: upn for uid, upn in conn.execute(sa.select(stg_users.c.user_id,
                                                                 stg_users.c.user_principal_name))}
        numbers = dict(conn.execute(sa.select(extension_map.c.number, extension_map.c.user_id)).all())
    by_id = {uid.lower(): uid for uid in staged}
    by_upn = {(upn or "").lower(): uid for uid, upn in staged.items() if upn}
    matched: dict[str, tuple[str, str]] = {}  # entry -> (graph key, matched_by)
    for entry in entries:
        low = entry.lower()
        if _DIGITS.match(entry) and entry in numbers:
            matched[entry] = (numbers[entry], "extension")
        elif low in by_id:
            matched[entry] = (by_id[low], "id")
        elif low in by_upn:
            matched[entry] = (by_upn[low], "upn")
        elif not _DIGITS.match(entry):
            matched[entry] = (entry, "upn" if "@" in entry else "id")
    keys = sorted({key for key, _ in matched.values()})
    read = _graph_get_users(graph, keys)
    clean, _, _ = clean_users([item for item in read.values() if item is not None])
    cleaned = {str(item.get("id")): item for item in clean}

    resolve_rows: list[dict[str, Any]] = []
    read_rows: dict[str, dict[str, Any]] = {}
    found_items: dict[str, dict[str, Any]] = {}
    gone: set[str] = set()
    unknown: list[str] = []
    for entry in entries:
        key, how = matched.get(entry, (None, None))
        item = read.get(key) if key else None
        staged_id = key if key in staged else None
        if item is not None and str(item.get("id")) in cleaned:
            good = cleaned[str(item["id"])]
            row = user_row_from_graph(good)
            found_items[row["user_id"]] = item
            user_id, upn = row["user_id"], row["user_principal_name"]
            read_rows[user_id] = {"user_id": user_id, "upn": upn, "outcome": "found",
                                  "detail": {f: good.get(f) for f in READ_FIELDS}}
        elif item is not None:  # the sanitising boundary refused the record (a note names the field)
            user_id, upn = str(item.get("id") or key), staged.get(str(item.get("id") or key)) or entry
            found_items[user_id] = item
            read_rows[user_id] = {"user_id": user_id, "upn": upn, "outcome": "refused", "detail": {
                "message": "Graph returned the user but it was refused at the staging boundary (sync_notes)"}}
        elif staged_id is not None:
            user_id, upn = staged_id, staged.get(staged_id)
            gone.add(user_id)
            read_rows[user_id] = {"user_id": user_id, "upn": upn, "outcome": "not_found",
                                  "detail": {"deleted": True, "message": "staged, but Graph no longer has this user"}}
        else:
            unknown.append(entry)
            resolve_rows.append({"user_id": None, "upn": entry[:320], "outcome": "unknown",
                                 "detail": {"entry": entry, "message": _unknown_message(entry)}})
            continue
        resolve_rows.append({"user_id": user_id, "upn": upn, "outcome": "found",
                             "detail": {"entry": entry, "matched_by": how}})
    with engine.begin() as conn:
        tr.replace_trace(conn, run_key, "resolve", tr.trace_rows(run_key, "resolve", resolve_rows, now))
        tr.replace_trace(conn, run_key, "read", tr.trace_rows(run_key, "read", list(read_rows.values()), now))
    if unknown:
        log.warning("only_users: %d of %d entries matched nobody: %s", len(unknown), len(entries), ", ".join(unknown))
    if not read_rows:
        raise UnknownUsersError(
            f"only_users: none of the {len(entries)} entries is a known user (UPN, Graph id or extension "
            f"number): {', '.join(unknown) or '(empty list)'}"
        )
    with engine.begin() as conn:
        merged, staged_ids, _ = stage_users_page(conn, list(found_items.values()), run_key, now)
        deleted = mark_users_deleted(conn, sorted(gone), run_key, now)
    counts: dict[str, Any] = {
        "mode": ON_DEMAND_MODE, "entries": len(entries), "found": len(read_rows), "unknown": len(unknown),
        "read": len(staged_ids), "not_found": len(gone), "inserted": merged.inserted, "updated": merged.updated,
        "unchanged": merged.unchanged, "deleted": deleted,
    }
    counts.update(_apply_scope(engine, graph, settings, run_key, now))
    log.info("on demand: %d entries -> %d users (%d read from Graph, %d gone from Graph), %d unknown",
             len(entries), len(read_rows), len(staged_ids), len(gone), len(unknown))
    return counts


def _unknown_message(entry: str) -> str:
    if _DIGITS.match(entry):
        return "no extension with this number is managed by the sync"
    return "not in staging and Graph has no user with this id or UPN"


def on_demand_users(engine: Engine, run_key: str) -> dict[str, str]:
    """Graph id -> UPN of the users an on-demand run resolved (empty for any other run)."""
    with engine.connect() as conn:
        return tr.on_demand_users(conn, run_key)


def _scope_detail(row: Mapping[str, Any], settings: Settings) -> tuple[str, dict[str, Any]]:
    """The ``scope`` trace outcome (``in_scope`` / ``removed`` / ``protected``) and its detail: the
    first reason, every reason (:func:`~m365_3cx.transform.scope.explain_scope`) and the settings."""
    from m365_3cx.transform.scope import IN_SCOPE, PROTECTED, ScopeParams, explain_scope

    why = explain_scope(row, ScopeParams.from_settings(settings))
    outcome = {IN_SCOPE: "in_scope", PROTECTED: "protected"}.get(why.verdict, "removed")
    first = next((m for c, m in why.reasons if c != "no_mail"), "in scope")
    return outcome, {"reason": first, **why.as_dict(), "group_id": settings.scope.group_id,
                     "filter": settings.scope.user_filter}


def trace_plan(engine: Engine, settings: Settings, run_key: str, now: datetime) -> int:
    """Trace the scope, match and plan steps of an on-demand run's users (after the plan is stored)."""
    with engine.connect() as conn:
        users = tr.on_demand_users(conn, run_key)
        if not users:
            return 0
        ids = sorted(users)
        staged = {r["user_id"]: dict(r) for r in conn.execute(
            sa.select(stg_users).where(stg_users.c.user_id.in_(ids))).mappings()}
        mapped = {r["user_id"]: dict(r) for r in conn.execute(
            sa.select(extension_map).where(extension_map.c.user_id.in_(ids))).mappings()}
        desired = {r["user_id"]: dict(r) for r in conn.execute(
            sa.select(tgt_extensions).where(tgt_extensions.c.user_id.in_(ids))).mappings()}
        started = conn.execute(sa.select(sync_runs.c.started_at).where(sync_runs.c.run_key == run_key)).scalar()
        plans = conn.execute(sa.select(sync_plan).where(sync_plan.c.run_key == run_key,
                                                        sync_plan.c.object_key.in_(ids))
                             .order_by(sync_plan.c.seq)).mappings().all()
    scope_rows, match_rows, plan_rows = [], [], []
    policy = settings.numbering.policy
    for uid in ids:
        upn = users[uid]
        row = staged.get(uid)
        if row is not None:
            outcome, detail = _scope_detail(row, settings)
            scope_rows.append({"user_id": uid, "upn": upn, "outcome": outcome, "detail": detail})
        target = desired.get(uid) or {}
        existing = mapped.get(uid)
        if existing is not None and started is not None and existing["assigned_at"] >= started \
                and not existing["adopted"]:
            match_rows.append({"user_id": uid, "upn": upn, "outcome": "new", "detail": {
                "number": existing["number"], "policy": policy,
                "fallback_to_pool": settings.numbering.fallback_to_pool}})
        elif existing is not None:
            match_rows.append({"user_id": uid, "upn": upn, "outcome": "existing", "detail": {
                "number": existing["number"], "status": existing["status"], "adopted": bool(existing["adopted"])}})
        elif target.get("number"):
            match_rows.append({"user_id": uid, "upn": upn, "outcome": "new", "detail": {
                "number": target["number"], "policy": policy,
                "fallback_to_pool": settings.numbering.fallback_to_pool}})
        else:
            reason = ("the user is protected or opted out" if target.get("protection")
                      else "user is not active" if target.get("state") != "active" else "no number could be assigned")
            match_rows.append({"user_id": uid, "upn": upn, "outcome": "none", "detail": {
                "reason": f"{reason} (see sync_notes)", "policy": policy}})
        mine = [p for p in plans if p["object_key"] == uid]
        for p in mine:
            plan_rows.append({"user_id": uid, "upn": upn, "outcome": p["action"], "detail": {
                "number": p["number"], "fields": sorted((p["changes"] or {}).keys()), "reason": p["reason"]}})
        if not mine:
            why = ("protected or opted out: the sync leaves the extension alone" if target.get("protection")
                   else "3CX already matches (or the user is not managed)")
            plan_rows.append({"user_id": uid, "upn": upn, "outcome": "none", "detail": {"reason": why}})
    with engine.begin() as conn:
        for step, rows in (("scope", scope_rows), ("match", match_rows), ("plan", plan_rows)):
            tr.replace_trace(conn, run_key, step, tr.trace_rows(run_key, step, rows, now))
    return len(ids)


def trace_results(engine: Engine, run_key: str, plan_key: str, object_type: str, step: str, now: datetime,
                  owners: Mapping[str, Iterable[str]] | None = None) -> int:
    """Trace the results of a plan's writes for the on-demand users (``apply`` steps).

    :param plan_key: the ``sync_plan.run_key`` of the feature's plan.
    :param object_type: ``extension``, ``contact`` or ``presence``.
    :param owners: for contacts, on-demand user id -> the entry keys the user sources; extensions
        and statuses are keyed by the user id itself.
    """
    with engine.connect() as conn:
        users = tr.on_demand_users(conn, run_key)
        if not users:
            return 0
        rows = conn.execute(sa.select(sync_plan).where(sync_plan.c.run_key == plan_key,
                                                       sync_plan.c.object_type == object_type)
                            .order_by(sync_plan.c.seq)).mappings().all()
        errors = _audit_errors(conn, run_key, object_type)
    out: list[dict[str, Any]] = []
    for uid in sorted(users):
        keys = set(owners.get(uid, ())) if owners is not None else {uid}
        mine = [r for r in rows if r["object_key"] in keys]
        if owners is not None:
            tally: dict[str, int] = {}
            for r in mine:
                tally[_result(r["status"])] = tally.get(_result(r["status"]), 0) + 1
            outcome = "none" if not mine else ("failed" if tally.get("failed") else
                                               "dry_run" if tally.get("dry_run") else "ok")
            out.append({"user_id": uid, "upn": users[uid], "outcome": outcome, "detail": tally})
            continue
        for r in mine:
            detail: dict[str, Any] = {"action": r["action"], "number": r["number"]}
            if object_type == "presence":
                detail["profile"] = ((r["changes"] or {}).get("CurrentProfileName") or [None, None])[1]
            if errors.get(r["object_key"]):
                detail["error"] = errors[r["object_key"]]
            out.append({"user_id": uid, "upn": users[uid], "outcome": _result(r["status"]), "detail": detail})
        if not mine:
            out.append({"user_id": uid, "upn": users[uid], "outcome": "none", "detail": {"reason": "nothing to write"}})
    with engine.begin() as conn:
        tr.replace_trace(conn, run_key, step, tr.trace_rows(run_key, step, out, now))
    return len(out)


def _result(plan_status: str) -> str:
    return {"applied": "ok", "planned": "skipped"}.get(plan_status, plan_status)


def _audit_errors(conn: Any, run_key: str, object_type: str) -> dict[str, str]:
    from m365_3cx.alerts import one_line_reason
    from m365_3cx.staging.schema import sync_audit

    query = sa.select(sync_audit.c.object_key, sync_audit.c.error).where(
        sync_audit.c.run_key == run_key, sync_audit.c.object_type == object_type, sync_audit.c.error.is_not(None))
    return {key: one_line_reason(error) for key, error in conn.execute(query)}


__all__ = [
    "ON_DEMAND_MODE",
    "UnknownUsersError",
    "extract_on_demand",
    "on_demand_users",
    "parse_entries",
    "trace_plan",
    "trace_results",
]
