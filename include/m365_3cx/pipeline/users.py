"""Users -> extensions: the steps the DAG tasks call, one function per task.

Each step reads its inputs from staging, does its work and writes its outputs back
to staging, returning only small counts (what XCom may carry). Steps are
idempotent: re-running one, or the whole chain, converges on the same 3CX state
and writes nothing when nothing changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from m365_3cx.errors import DeltaTokenExpiredError, GraphFatalError
from m365_3cx.pipeline.outcomes import load_changes, record_outcomes
from m365_3cx.pipeline.preview import log_plan_preview
from m365_3cx.staging import boundary, runs
from m365_3cx.staging.extensions import pbx_row_from_xapi, replace_snapshot, replace_targets
from m365_3cx.staging.frames import load_frame
from m365_3cx.staging.numbers import (
    assign_numbers,
    grace_expired_user_ids,
    purge_expired_quarantine,
    reactivate_numbers,
    release_numbers,
    set_threecx_ids,
    start_removal_clock,
    stop_removal_clock,
    sync_removal_clock,
)
from m365_3cx.staging.runs import add_notes, add_record_notes, load_plan, save_plan
from m365_3cx.staging.schema import cur_extensions, extension_map, stg_users, sync_runs
from m365_3cx.staging.state import DeltaStateStore
from m365_3cx.staging.users import (
    GRAPH_USER_SELECT,
    MergeCounts,
    mark_missing_deleted,
    mark_users_deleted,
    merge_users,
    set_scope,
    set_scope_details,
    user_row_from_graph,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.client import GraphClient
    from m365_3cx.settings import Settings
    from m365_3cx.threecx.client import ThreeCXClient

log = logging.getLogger(__name__)

USERS_RESOURCE = "users"
#: ``sync_notes.step`` of the sanitising boundary's notes (all extracts; replaced per record).
SANITIZE_STEP = "sanitize"
#: DAGs whose successful runs applied the users plan (the hourly presence DAG does not). The push DAG
#: runs the users delta and plan on every run, like the delta DAG.
USER_SYNC_DAGS = ("m365_3cx_full_sync", "m365_3cx_delta", "m365_3cx_push")


@dataclass(frozen=True)
class RunInfo:
    """Identity of one DAG run in staging.

    :param run_key: ``"{dag_id}/{run_id}"``.
    :param mode: ``full`` or ``delta``.
    """

    run_key: str
    dag_id: str
    run_id: str
    mode: str
    dry_run: bool = False

    @classmethod
    def create(cls, dag_id: str, run_id: str, mode: str, dry_run: bool = False) -> RunInfo:
        return cls(f"{dag_id}/{run_id}"[:250], dag_id, run_id, mode, dry_run)


def start_run(engine: Engine, run: RunInfo, now: datetime) -> dict[str, Any]:
    """Record the run as started (idempotent on retry), dry when asked or when writes are off.

    ``run.dry_run`` is the requested dry run; the stored ``dry_run`` is the effective decision of
    :func:`m365_3cx.pipeline.safety.decide` and ``dry_reason`` says why.
    """
    from m365_3cx.pipeline.safety import decide
    from m365_3cx.staging.control import writes_enabled

    with engine.begin() as conn:
        decision = decide(run.dry_run, writes_enabled(conn))
        runs.start_run(conn, run.run_key, run.dag_id, run.run_id, run.mode, decision.dry_run, now,
                       dry_reason=decision.reason)
    if decision.dry_run:
        log.info("dry run: %s; the plan is stored, nothing is written to 3CX", decision.describe())
    return {"run_key": run.run_key, "mode": run.mode, "dry_run": decision.dry_run, "dry_reason": decision.reason}


def finish_run(engine: Engine, run_key: str, status: str, counts: dict[str, Any], now: datetime) -> None:
    """Record the run's final status and counts."""
    with engine.begin() as conn:
        runs.finish_run(conn, run_key, status, counts, now)


def _scope_ids(graph: GraphClient, settings: Settings) -> tuple[set[str] | None, set[str] | None, set[str] | None]:
    """Ids of the scope group's members, of the users matching the filter and of the protected
    group's members (each ``None`` when that setting is not set)."""
    scope = settings.scope
    group = graph.group_member_ids(scope.group_id) if scope.group_id else None
    matching = None
    if scope.user_filter:
        matching = {u["id"] for page in graph.list_users(select=("id",), filter=scope.user_filter) for u in page}
    protected_group = getattr(scope, "protected_group_id", None)
    protected = graph.group_member_ids(protected_group) if protected_group else None
    return group, matching, protected


def extract_users(
    engine: Engine,
    graph: GraphClient,
    settings: Settings,
    run_key: str,
    mode: str,
    now: datetime,
) -> dict[str, Any]:
    """Bring ``stg_users`` up to date from Graph.

    ``full`` lists every user, soft-deletes the ones no longer listed and stores a
    fresh delta link taken *before* the listing (so nothing changed meanwhile is
    missed). ``delta`` follows the stored delta link; each page's rows commit on
    their own and the new link commits with the last page. An expired link falls
    back to a full extract, logged as such.

    :return: counts: mode actually used, pages, inserted, updated, unchanged, deleted, scope_changed.
    """
    store = DeltaStateStore()
    if mode == "delta":
        with engine.connect() as conn:
            link = store.get(conn, USERS_RESOURCE)
        if link is None:
            log.warning("users: no delta link stored yet; running a full extract")
        else:
            try:
                counts = _extract_delta(engine, graph, store, link, run_key, now)
            except DeltaTokenExpiredError:
                log.warning("users: delta token expired (syncStateNotFound); falling back to a full extract")
                with engine.begin() as conn:
                    store.clear(conn, USERS_RESOURCE)
            else:
                counts.update(_apply_scope(engine, graph, settings, run_key, now))
                return counts
    counts = _extract_full(engine, graph, store, run_key, now)
    counts.update(_apply_scope(engine, graph, settings, run_key, now))
    return counts


def _extract_full(
    engine: Engine, graph: GraphClient, store: DeltaStateStore, run_key: str, now: datetime
) -> dict[str, Any]:
    fresh_link = graph.latest_users_delta_link(GRAPH_USER_SELECT)
    totals = {"mode": "full", "pages": 0, "inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0}
    seen: set[str] = set()
    for items in graph.list_users(select=GRAPH_USER_SELECT):
        with engine.begin() as conn:
            merged, staged, _ = stage_users_page(conn, items, run_key, now)
        seen.update(staged)
        totals["pages"] += 1
        totals["inserted"] += merged.inserted
        totals["updated"] += merged.updated
        totals["unchanged"] += merged.unchanged
    with engine.begin() as conn:
        if not seen and load_frame(conn, "stg_users", where={"deleted": False}).shape[0]:
            raise GraphFatalError("Graph listed no users at all; refusing to mark every staged user deleted",
                                  code="EmptyUserList")
        totals["deleted"] = mark_missing_deleted(conn, seen, run_key, now)
        if fresh_link:
            store.save(conn, USERS_RESOURCE, fresh_link, run_key)
    log.info(
        "users full extract: %d pages, %d inserted, %d updated, %d unchanged, %d deleted",
        totals["pages"], totals["inserted"], totals["updated"], totals["unchanged"], totals["deleted"],
    )
    return totals


def _extract_delta(
    engine: Engine, graph: GraphClient, store: DeltaStateStore, link: str, run_key: str, now: datetime
) -> dict[str, Any]:
    totals = {"mode": "delta", "pages": 0, "inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0}
    for page in graph.users_delta(link, GRAPH_USER_SELECT):
        with engine.begin() as conn:
            merged, _, removed = stage_users_page(conn, page.items, run_key, now)
            totals["deleted"] += mark_users_deleted(conn, removed, run_key, now)
            if page.delta_link:
                store.save(conn, USERS_RESOURCE, page.delta_link, run_key)
        totals["pages"] += 1
        totals["inserted"] += merged.inserted
        totals["updated"] += merged.updated
        totals["unchanged"] += merged.unchanged
    log.info(
        "users delta extract: %d pages, %d inserted, %d updated, %d removed",
        totals["pages"], totals["inserted"], totals["updated"], totals["deleted"],
    )
    return totals


def clean_users(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any], list[str]]:
    """Pass a page of Graph users through the sanitising boundary (:mod:`m365_3cx.staging.boundary`).

    :return: the clean items (rejected ones left out), one note per changed or rejected field
        (naming the user and the Graph property), and the ids of every user of the page.
    """
    from m365_3cx.transform.notes import ERROR, WARNING, user_note

    clean: list[dict[str, Any]] = []
    notes: list[Any] = []
    keys: list[str] = []
    for item in items:
        result = boundary.clean_user_item(item)
        key = boundary.printable_key(item.get("id"))
        keys.append(key)
        label = str((result.item or {}).get("userPrincipalName") or "") or key
        for finding in result.findings:
            severity = ERROR if finding.rejected else WARNING
            notes.append(user_note(key, label, finding.field, f"{finding.field}: {finding.message}", severity))
        if result.item is not None:
            clean.append(result.item)
    if notes:
        log.warning("users: %d values cleaned or refused at the staging boundary (see sync_notes)", len(notes))
    return clean, notes, keys


def stage_users_page(conn: Any, items: list[dict[str, Any]], run_key: str,
                     now: datetime) -> tuple[MergeCounts, list[str], list[str]]:
    """Stage one page of Graph users (full or delta) in the caller's transaction.

    The page passes the sanitising boundary (:func:`clean_users`), its users are merged and the
    boundary's notes replace the page's earlier ones (step :data:`SANITIZE_STEP`), so a retried
    page neither fails again nor duplicates notes.

    :return: merge counts, ids of the users staged, ids of ``@removed`` users (to soft-delete).
    """
    from m365_3cx.transform.notes import note_rows

    clean, notes, keys = clean_users(items)
    removed = [str(item["id"]) for item in clean if "@removed" in item]
    rows = [user_row_from_graph(item) for item in clean if "@removed" not in item]
    merged = merge_users(conn, rows, run_key, now)
    if keys:
        add_record_notes(conn, run_key, note_rows(notes, run_key, now), step=SANITIZE_STEP,
                         object_type="user", object_keys=keys, now=now)
    return merged, [row["user_id"] for row in rows], removed


def _apply_scope(engine: Engine, graph: GraphClient, settings: Settings, run_key: str, now: datetime) -> dict[str, int]:
    group, matching, protected = _scope_ids(graph, settings)
    ids = group if matching is None else matching if group is None else group & matching
    with engine.begin() as conn:
        flipped = set_scope(conn, ids, run_key, now)
        protection = set_scope_details(conn, group, matching, protected, run_key, now)
    return {"scope_changed": flipped, "protection_changed": protection}


def _applied_runs() -> Any:
    """Runs whose plan reached 3CX: successful, not dry, of a DAG that applies the users plan.

    An on-demand run (``only_users``) planned a few users only, so it never counts: the changes it
    staged for anybody else stay pending for the next delta run.
    """
    return sa.select(sync_runs.c.run_key).where(
        sync_runs.c.status == "success", sync_runs.c.dry_run.is_(False), sync_runs.c.dag_id.in_(USER_SYNC_DAGS),
        sync_runs.c.mode != "on_demand",
    )


def run_was_applied(conn: Any, run_key: str | None) -> bool:
    """Whether the run's plan reached 3CX (see :func:`_applied_runs`)."""
    if run_key is None:
        return False
    query = sa.select(sa.func.count()).where(sync_runs.c.run_key == run_key, sync_runs.c.run_key.in_(_applied_runs()))
    return bool(conn.execute(query).scalar_one())


def pending_filter(conn: Any, table: Any, run_key: str) -> Any:
    """Rows of a staging table whose change has not reached 3CX yet (``None`` = every row).

    A row is pending when this run changed it, or when it changed after the start of the last
    applied run and the run that changed it was not applied itself (it failed, is still running,
    or was a dry run). So a change whose apply failed is retried by the next delta run, and a
    change an applied run already carried is not planned again.
    """
    last_ok = conn.execute(
        sa.select(sa.func.max(sync_runs.c.started_at)).where(sync_runs.c.run_key.in_(_applied_runs()))
    ).scalar()
    if last_ok is None:
        return None
    not_applied = sa.or_(table.c.last_run_key.is_(None), table.c.last_run_key.not_in(_applied_runs()))
    return sa.or_(table.c.last_run_key == run_key, sa.and_(table.c.updated_at >= last_ok, not_applied))


def pending_user_keys(engine: Engine, run_key: str) -> set[str]:
    """Users whose change has not reached 3CX yet (see :func:`pending_filter`); a delta run plans only these."""
    with engine.connect() as conn:
        condition = pending_filter(conn, stg_users, run_key)
        query = sa.select(stg_users.c.user_id)
        if condition is not None:
            query = query.where(condition)
        return {row[0] for row in conn.execute(query)}


def grace_due_user_keys(engine: Engine, settings: Settings, now: datetime) -> set[str]:
    """Users whose ``disable_then_delete`` grace period ran out since the last applied run (one
    indexed range query; empty under any other removal policy). A delta run plans these too."""
    if settings.extensions.removal_policy != "disable_then_delete":
        return set()
    with engine.connect() as conn:
        last_ok = conn.execute(
            sa.select(sa.func.max(sync_runs.c.started_at)).where(sync_runs.c.run_key.in_(_applied_runs()))
        ).scalar()
        return grace_expired_user_ids(conn, settings.extensions.delete_after_days, now, since=last_ok)


def snapshot_threecx(
    engine: Engine, threecx: ThreeCXClient, run_key: str, now: datetime, settings: Settings | None = None
) -> dict[str, int]:
    """Read every 3CX user (one paged OData read) into ``cur_extensions``.

    Also re-links creates whose response was lost (e.g. a dropped connection after the PBX
    created the user): a mapped user without a 3CX id whose number is held by an extension
    with that user's own e-mail address is that user's extension. With
    ``extensions.adopt_existing = "email"`` it adopts existing extensions (see
    :func:`_adopt_existing`).
    """
    rows = [boundary.storable_row(cur_extensions, pbx_row_from_xapi(user))
            for page in threecx.list_users() for user in page]
    with engine.begin() as conn:
        replace_snapshot(conn, rows, run_key, now)
        relinked = _relink_lost_creates(conn)
        adopted = _adopt_existing(conn, settings, now) if settings is not None else 0
    log.info("3CX snapshot: %d extensions; %d lost creates re-linked; %d adopted", len(rows), relinked, adopted)
    return {"extensions": len(rows), "relinked": relinked, "adopted": adopted}


def _adopt_existing(conn: Any, settings: Settings, now: datetime) -> int:
    """Adopt unmanaged extensions whose e-mail address is an in-scope user's own.

    Only with ``extensions.adopt_existing = "email"``; never an extension tagged ``MS`` (3CX's
    own M365 sync owns it), never when two extensions or two users share the address, never
    for a user who already has a number, never for a protected or opted-out user.
    """
    if settings.extensions.adopt_existing != "email":
        return 0
    mapped_users = {r[0] for r in conn.execute(sa.select(extension_map.c.user_id))}
    mapped_ids = {r[0] for r in conn.execute(sa.select(extension_map.c.threecx_id)) if r[0] is not None}
    mapped_numbers = {r[0] for r in conn.execute(sa.select(extension_map.c.number))}
    by_mail: dict[str, list[tuple[int, str]]] = {}
    for threecx_id, number, email, tags in conn.execute(
        sa.select(cur_extensions.c.threecx_id, cur_extensions.c.number, cur_extensions.c.email, cur_extensions.c.tags)
    ):
        if not email or threecx_id in mapped_ids or number in mapped_numbers or "MS" in (tags or []):
            continue
        by_mail.setdefault(email.strip().lower(), []).append((threecx_id, number))
    from m365_3cx.transform.scope import ProtectionParams, protection_of

    protection = ProtectionParams.from_settings(settings)
    users_by_mail: dict[str, list[str]] = {}
    query = sa.select(stg_users.c.user_id, stg_users.c.mail, stg_users.c.user_type, stg_users.c.user_principal_name,
                      stg_users.c.extension_attributes, stg_users.c.protected_group).where(
        stg_users.c.in_scope.is_(True), stg_users.c.deleted.is_(False), stg_users.c.mail.is_not(None),
        sa.or_(stg_users.c.account_enabled.is_(None), stg_users.c.account_enabled.is_(True)),
    )
    for user_id, mail, user_type, upn, attributes, protected_group in conn.execute(query):
        if user_id in mapped_users or (user_type == "Guest" and not settings.scope.include_guests):
            continue
        if protection_of(upn, attributes, protected_group, protection) is not None:
            continue  # a protected user's extension is never taken over
        users_by_mail.setdefault(mail.strip().lower(), []).append(user_id)
    adoptions = [
        {"user_id": users[0], "number": extensions[0][1], "threecx_id": extensions[0][0], "adopted": True}
        for mail, users in users_by_mail.items()
        if len(users) == 1 and len(extensions := by_mail.get(mail, [])) == 1
    ]
    if adoptions:
        assign_numbers(conn, adoptions, now)
    return len(adoptions)


def _relink_lost_creates(conn: Any) -> int:
    query = (
        sa.select(extension_map.c.user_id, cur_extensions.c.threecx_id)
        .select_from(
            extension_map.join(cur_extensions, extension_map.c.number == cur_extensions.c.number)
            .join(stg_users, stg_users.c.user_id == extension_map.c.user_id)
        )
        .where(
            extension_map.c.status == "active",
            extension_map.c.threecx_id.is_(None),
            stg_users.c.mail.is_not(None),
            sa.func.lower(stg_users.c.mail) == sa.func.lower(cur_extensions.c.email),
        )
    )
    pairs = conn.execute(query).all()
    set_threecx_ids(conn, dict(pairs))
    return len(pairs)


def transform_users(
    engine: Engine, settings: Settings, run_key: str, now: datetime, *, dry_run: bool = False
) -> dict[str, int]:
    """Staging users -> desired extensions (``tgt_extensions``), new numbers and per-record notes.

    A dry run plans with the numbers it would assign but does not record them in
    ``extension_map``, so changing the numbering settings after a dry run still takes effect; nor
    does it start or stop a removal grace period (``extension_map.removal_since``).
    """
    from m365_3cx.pipeline.safety import write_gate
    from m365_3cx.transform.extensions import ExtensionParams, desired_extensions
    from m365_3cx.transform.notes import note_rows

    dry_run = write_gate(engine, run_key, dry_run, step="transform_extensions").dry_run
    with engine.begin() as conn:
        purge_expired_quarantine(conn, settings.numbering.quarantine_days, now)
        users = load_frame(conn, "stg_users")
        mapping = load_frame(conn, "extension_map")
        pbx = load_frame(conn, "cur_extensions")
    result = desired_extensions(users, mapping, pbx, ExtensionParams.from_settings(settings), now)
    rows = result.frame.to_dict("records")
    with engine.begin() as conn:
        replace_targets(conn, rows, run_key, now)
        reused_from = [a["replaces_user_id"] for a in result.new_assignments if a.get("replaces_user_id")]
        if reused_from and not dry_run:
            conn.execute(sa.delete(extension_map).where(extension_map.c.user_id.in_(reused_from)))
        if not dry_run:
            assign_numbers(
                conn, [{"user_id": a["user_id"], "number": a["number"]} for a in result.new_assignments], now
            )
            started, cleared = sync_removal_clock(conn, now)
            if started or cleared:
                log.info("removal grace periods: %d started (extension already disabled), %d ended", started, cleared)
        add_notes(conn, run_key, note_rows(result.notes, run_key, now), step="transform", now=now)
    active = int((result.frame["state"] == "active").sum()) if len(result.frame) else 0
    log.info(
        "transform: %d desired extensions (%d active), %d new numbers, %d notes",
        len(rows), active, len(result.new_assignments), len(result.notes),
    )
    return {"desired": len(rows), "active": active, "new_numbers": len(result.new_assignments),
            "notes": len(result.notes)}


def plan_users(
    engine: Engine, settings: Settings, run_key: str, only_keys: set[str] | None, now: datetime
) -> dict[str, int]:
    """Diff desired vs current 3CX state into ``sync_plan`` (stored and logged before anything is written)."""
    from m365_3cx.reconcile.plan import PlanParams, plan_extensions, plan_rows
    from m365_3cx.transform.notes import note_rows

    with engine.connect() as conn:
        desired = load_frame(conn, "tgt_extensions")
        mapping = load_frame(conn, "extension_map")
        pbx = load_frame(conn, "cur_extensions")
        labels = dict(conn.execute(sa.select(stg_users.c.user_id, stg_users.c.user_principal_name)).all())
    result = plan_extensions(
        desired, mapping, pbx, PlanParams.from_settings(settings), only_keys=only_keys, labels=labels, now=now
    )
    with engine.begin() as conn:
        save_plan(conn, run_key, plan_rows(result.changes, run_key))
        add_notes(conn, run_key, note_rows(result.notes, run_key, now), step="plan", now=now)
    counts: dict[str, int] = {"create": 0, "update": 0, "disable": 0, "delete": 0}
    for change in result.changes:
        counts[change.action] += 1
    log_plan_preview(log, "extensions", result.changes, settings.logs.plan_preview)
    counts["notes"] = len(result.notes)
    counts["managed"] = result.managed_count
    log.info(
        "plan: %d create, %d update, %d disable, %d delete of %d managed extensions; %d notes",
        counts["create"], counts["update"], counts["disable"], counts["delete"], result.managed_count,
        counts["notes"],
    )
    return counts


def apply_users(
    engine: Engine,
    threecx: ThreeCXClient,
    settings: Settings,
    run_key: str,
    now: datetime,
    *,
    dry_run: bool,
    allow_mass_removal: bool,
) -> dict[str, int]:
    """Execute the stored plan against 3CX: guards first, then the changes (``threecx.write_concurrency``
    at a time), outcomes audited with bulk statements per chunk.

    The write gate (:func:`~m365_3cx.pipeline.safety.write_gate`) decides first: with ``dry_run``
    requested, or writes off (not live), nothing is written. Removals over the guard need the run's
    approval (or ``allow_mass_removal``); a rejected or timed-out approval applies everything else.
    Creates are idempotent: a planned extension whose number is already a 3CX user with the
    user's own e-mail address (an earlier attempt created it and its outcome was lost) is
    re-linked, not created again (one filtered read per 20 creates).

    :param dry_run: the run's requested dry run (the gate may make the run dry anyway).
    :raises MassRemovalError: before any write, when the plan removes too many extensions and no
        decision allows or rejects them.
    """
    from m365_3cx.pipeline.safety import guard_removals, write_gate
    from m365_3cx.reconcile.apply import OK, Outcome, apply_changes, audit_rows
    from m365_3cx.reconcile.existing import RELINKED_NOTE, existing_extensions

    dry_run = write_gate(engine, run_key, dry_run, step="apply_extensions").dry_run
    with engine.connect() as conn:
        planned = load_changes(conn, run_key, "extension")
        managed_count = _managed_in_snapshot(conn)
    planned = guard_removals(
        engine, run_key, run_key, "extension", planned, managed_count, settings,
        allow=allow_mass_removal, dry_run=dry_run, scope_hint="the user scope",
    )
    changes = [change for _, change in planned]
    seq_of = {id(change): seq for seq, change in planned}
    create_defaults = _create_defaults(threecx, settings) if any(c.action == "create" for c in changes) else {}

    def record(outcomes: list[Outcome]) -> None:
        with engine.begin() as conn:
            reached = record_outcomes(
                conn, plan_key=run_key, dry_run=dry_run,
                outcomes=[(seq_of[id(o.change)], o.result, audit_rows(o, run_key, now)) for o in outcomes])
            done = [o for o, ok in zip(outcomes, reached, strict=True) if ok]
            set_threecx_ids(conn, {o.change.object_key: o.threecx_id for o in done
                                   if o.change.action == "create" and o.threecx_id is not None})
            deleted = [o.change.object_key for o in done if o.change.action == "delete"]
            release_numbers(conn, deleted, now)
            start_removal_clock(conn, [o.change.object_key for o in done if o.change.action == "disable"], now)
            stop_removal_clock(conn, [*deleted, *(o.change.object_key for o in done if o.change.action == "update"
                                                  and o.change.fields.get("Enabled") == (False, True))])
            reactivate_numbers(conn, [o.change.object_key for o in done if o.change.action == "create"])

    relinked = {} if dry_run else existing_extensions(threecx, changes)
    done_before = [Outcome(c, OK, RELINKED_NOTE, relinked[id(c)]) for c in changes if id(c) in relinked]
    if done_before:  # created by an earlier attempt whose outcome was lost: never twice
        record(done_before)
    changes = [c for c in changes if id(c) not in relinked]
    counts = apply_changes(changes, threecx, on_outcomes=record, create_defaults=create_defaults, dry_run=dry_run,
                           concurrency=settings.threecx.write_concurrency)
    result = counts.as_dict()
    result["relinked"] = len(relinked)
    log.info(
        "apply%s: %d created, %d updated, %d disabled, %d deleted, %d failed, %d skipped",
        " (dry run)" if dry_run else "", result["created"], result["updated"], result["disabled"],
        result["deleted"], result["failed"], result["skipped"],
    )
    return result


def review_user_removals(engine: Engine, settings: Settings, run_key: str) -> Any:
    """The run's planned extension removals against the mass-removal guard (:class:`RemovalReview`)."""
    from m365_3cx.pipeline.outcomes import OPEN_STATUSES
    from m365_3cx.pipeline.safety import review_removals

    with engine.connect() as conn:
        rows = [r for r in load_plan(conn, run_key, statuses=OPEN_STATUSES)
                if (r["object_type"] or "extension") == "extension"]
        managed = _managed_in_snapshot(conn)
    return review_removals(rows, "extension", run_key, managed, settings)


def removal_labels(engine: Engine, keys: list[str]) -> dict[str, dict[str, Any]]:
    """UPN and name of the users whose extensions a plan removes (for the approval body)."""
    if not keys:
        return {}
    labels: dict[str, dict[str, Any]] = {}
    query = (
        sa.select(stg_users.c.user_id, stg_users.c.user_principal_name, stg_users.c.display_name,
                  cur_extensions.c.first_name, cur_extensions.c.last_name)
        .select_from(stg_users.outerjoin(extension_map, extension_map.c.user_id == stg_users.c.user_id)
                     .outerjoin(cur_extensions, cur_extensions.c.threecx_id == extension_map.c.threecx_id))
        .where(stg_users.c.user_id.in_(sa.bindparam("keys", expanding=True)))
    )
    with engine.connect() as conn:
        for uid, upn, display, first, last in conn.execute(query, {"keys": keys}):
            name = " ".join(p for p in (first, last) if p) or display
            labels[f"extension:{uid}"] = {"upn": upn, "name": name}
    return labels


def _managed_in_snapshot(conn: Any) -> int:
    """Managed extensions that exist in 3CX right now: the mass-removal guard's base."""
    query = (
        sa.select(sa.func.count())
        .select_from(extension_map.join(cur_extensions, extension_map.c.threecx_id == cur_extensions.c.threecx_id))
        .where(extension_map.c.status == "active")
    )
    return int(conn.execute(query).scalar_one())


def _create_defaults(threecx: ThreeCXClient, settings: Settings) -> dict[str, Any]:
    """Department membership for new extensions: the configured group, else the PBX default group."""
    from m365_3cx.threecx.client import odata_quote

    name = settings.extensions.group_name
    group = None
    if name:
        pages = threecx.iter_collection("Groups", filter=f"Name eq {odata_quote(name)}")
        group = next((g for page in pages for g in page), None)
        if group is None:
            log.warning("3CX group %r not found; new extensions go to the default group", name)
    group = group or threecx.default_group()
    if not group:
        return {}
    return {"PrimaryGroupId": group["Id"], "Groups": [{"GroupId": group["Id"], "Rights": {"RoleName": "users"}}]}
