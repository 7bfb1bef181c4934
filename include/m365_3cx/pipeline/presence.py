"""Calendar, automatic replies and Teams presence -> 3CX status: the steps the presence tasks call.

``plan_shards`` splits the managed users into shards (XCom carries only the descriptors),
``extract_calendars`` stages one shard's calendars (and automatic replies),
``extract_teams_presence`` polls every managed user's Teams presence (``presence.teams``),
``compute_presence`` decides every user's profile at wall-clock *now* and plans the switches,
``apply_presence`` writes them. Steps are idempotent; a second run in the same minute writes
nothing to 3CX. A late run or a backfill never applies a status from the past: the caller passes
the real current time, never the DAG run's logical date.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from m365_3cx.pipeline.outcomes import OPEN_STATUSES, record_outcomes
from m365_3cx.pipeline.preview import log_plan_preview
from m365_3cx.staging import presence as stage
from m365_3cx.staging import push as push_queue
from m365_3cx.staging import trace
from m365_3cx.staging.runs import add_notes, add_record_notes, load_plan, save_plan, set_plan_statuses
from m365_3cx.staging.state import DeltaStateStore

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.calendar import UserCalendar
    from m365_3cx.graph.client import GraphClient
    from m365_3cx.pipeline.presence_decide import Decisions
    from m365_3cx.settings import Settings
    from m365_3cx.threecx.client import ThreeCXClient

log = logging.getLogger(__name__)

STEP_EXTRACT = "presence_extract"
STEP_COMPUTE = "presence_compute"
STEP_TEAMS = "presence_teams"
BY_ID_CHUNK = 40
"""User ids per filtered ``CurrentProfileName`` read of a delta run (``Id eq 1 or Id eq 2 ...``)."""


def plan_shards(engine: Engine, settings: Settings, *, on_demand_run: str | None = None,
                push_run: str | None = None) -> list[dict[str, Any]]:
    """Shard descriptors ``{"shard", "of", "first", "last"}`` (user-id ranges) of the managed users.

    :param on_demand_run: the run key of a provision-on-demand run: one shard of its managed users
        (``{"on_demand": true}``; the extract reads the users from the run's trace).
    :param push_run: the run key of a push run: one shard of the managed mailboxes its claimed
        calendar notifications name (``{"push": true}``), none when there are none.
    :return: no shards when presence is disabled or nobody is managed.
    """
    if not settings.presence.enabled:
        log.info("presence: disabled in settings; no calendar shards")
        return []
    with engine.connect() as conn:
        ids = [u.user_id for u in stage.presence_users(conn)]
        if on_demand_run is not None:
            wanted = trace.on_demand_users(conn, on_demand_run)
            ids = [uid for uid in ids if uid in wanted]
            log.info("presence (on demand): %d of %d named users are managed", len(ids), len(wanted))
            return [{"shard": 1, "of": 1, "first": ids[0], "last": ids[-1], "on_demand": True}] if ids else []
        if push_run is not None:
            notified = push_queue.claimed_users(conn, push_run, "events")
            ids = [uid for uid in ids if uid in notified]
            log.info("presence (push): %d of %d notified mailboxes are managed", len(ids), len(notified))
            return [{"shard": 1, "of": 1, "first": ids[0], "last": ids[-1], "push": True}] if ids else []
    size = settings.presence.shard_size
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    shards = [{"shard": n, "of": len(chunks), "first": chunk[0], "last": chunk[-1]}
              for n, chunk in enumerate(chunks, start=1)]
    log.info("presence: %d users in %d shard(s) of up to %d", len(ids), len(shards), size)
    return shards


def shard_label(shard: dict[str, Any]) -> str:
    """A short UI name of a shard: ``shard 2/5 (users 3fa8..-91c2..)``."""
    if shard.get("on_demand"):
        return "on demand (only_users)"
    if shard.get("push"):
        return "notified mailboxes"
    return f"shard {shard['shard']}/{shard['of']} (users {str(shard['first'])[:8]}..-{str(shard['last'])[:8]}..)"


def extract_calendars(
    engine: Engine,
    graph: GraphClient,
    settings: Settings,
    run_key: str,
    mode: str,
    shard: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Stage the calendars of one shard's users.

    ``full`` (hourly, nightly): an initial ``calendarView/delta`` round over the current window
    for every user (as complete as ``calendarView``) plus automatic replies; the round's new delta
    link replaces the stored one, so the window is re-anchored and the next delta run is
    incremental at once. ``delta``: follow each user's delta link (initial round when missing or
    expired). On-demand runs read ``calendarView`` afresh and drop the user's link. The users one
    batch round completes are staged (rows and links) with a few bulk statements in one
    transaction. Users without a mailbox get a note in ``sync_notes`` and are skipped.

    :param mode: ``full`` or ``delta``.
    :param shard: a descriptor from :func:`plan_shards`.
    :return: counts from :func:`m365_3cx.graph.calendar.read_calendars` plus ``staged``/``deleted``.
    :raises GraphError: a non per-user Graph failure.
    """
    from m365_3cx.graph.calendar import CalendarWindow, read_calendars
    from m365_3cx.transform.notes import INFO, WARNING, Note, note_rows

    presence = settings.presence
    window = CalendarWindow.around(now, presence.window_days_back, presence.window_days_ahead)
    store = DeltaStateStore()
    with engine.connect() as conn:
        if shard.get("on_demand"):  # the named users' whole window, read afresh
            mode = "full"
            wanted = trace.on_demand_users(conn, run_key)
            users = [u for u in stage.presence_users(conn, first=shard["first"], last=shard["last"])
                     if u.user_id in wanted]
        elif shard.get("push"):  # a push run: the calendar delta of just the notified mailboxes
            notified = push_queue.claimed_users(conn, run_key, "events")
            users = [u for u in stage.presence_users(conn, first=shard["first"], last=shard["last"],
                                                     with_mailbox_only=(mode == "delta"))
                     if u.user_id in notified]
        else:
            users = stage.presence_users(conn, first=shard["first"], last=shard["last"],
                                         with_mailbox_only=(mode == "delta"))
        stored = store.get_many(conn, [stage.events_resource(u.user_id) for u in users]) if mode == "delta" else {}
        links = {u.user_id: stored.get(stage.events_resource(u.user_id)) for u in users}
    notes: list[Note] = []
    totals = {"staged": 0, "deleted": 0}

    def on_users(calendars: list[UserCalendar]) -> None:
        """One page round's finished users: staged, and their links saved or cleared, in one transaction."""
        save: dict[str, str] = {}
        clear: list[str] = []
        for calendar in calendars:
            resource = stage.events_resource(calendar.user_id)
            if not calendar.mailbox or calendar.problem is not None:
                clear.append(resource)
                message = calendar.problem or "no Exchange Online mailbox (MailboxNotEnabledForRESTAPI); skipped"
                # No mailbox: nothing to fix (no calendar to follow). A calendar that could not be read
                # (e.g. outside the app's Exchange RBAC scope) is worth a look.
                severity = WARNING if calendar.problem else INFO
                notes.append(Note("presence", calendar.user_id, calendar.user_id, "calendar", severity,
                                  f"user {calendar.user_id}: {message}"))
            elif calendar.delta_link:
                save[resource] = calendar.delta_link
            elif mode == "full":
                clear.append(resource)
        with engine.begin() as conn:
            staged = stage.stage_calendars(conn, calendars, run_key, now)
            findings = [(uid, event_id, finding) for uid, counts in staged.items()
                        for event_id, finding in counts.findings]
            if findings:
                _save_event_notes(conn, findings, run_key, now)
            if save:
                store.save_many(conn, save, run_key, now=now)
            store.clear_many(conn, clear)
        for calendar in calendars:
            if calendar.mailbox and calendar.problem is None:
                totals["staged"] += staged[calendar.user_id].upserted
                totals["deleted"] += staged[calendar.user_id].deleted

    read_mode = "view" if shard.get("on_demand") else "delta"  # full: links is empty, so initial rounds
    counts: dict[str, Any] = read_calendars(
        graph, [u.user_id for u in users], window, mode=read_mode, delta_links=links,
        # Automatic replies have no delta query: read them on every run (one batched item per user),
        # so turning them on or off reaches 3CX within one delta interval.
        read_auto_replies=True, on_users=on_users, default_time_zone=settings.timezone,
        store_subjects=presence.store_subjects,
    )
    with engine.begin() as conn:
        step = f"{STEP_EXTRACT}:{shard['shard']}"
        add_notes(conn, run_key, note_rows(notes, run_key, now), step=step, now=now)
        if mode == "full" and shard["shard"] == 1:
            counts["purged"] = stage.purge_events(conn, window.start)
    counts.update(totals)
    counts["shard"] = shard["shard"]
    return counts


def extract_teams_presence(
    engine: Engine, graph: GraphClient, settings: Settings, run_key: str, now: datetime, *,
    on_demand_run: bool = False,
) -> dict[str, Any]:
    """Poll the Teams presence of every managed user into ``stg_teams_presence``.

    Users go to Graph 650 per request (the documented maximum) within the client-side budget
    ``presence.teams.requests_per_30s``; each request's answers are staged as they come (one
    upsert per request). Users Graph returned no presence for lose their staged one, so only
    what this poll saw counts. A provision-on-demand run polls just its named users.

    :param on_demand_run: poll only the users of the run's ``only_users`` trace.
    :return: counts: users, requests, staged, dropped, waited (seconds in the budget).
    :raises GraphFatalError: the app lacks ``Presence.Read.All`` (the message says so).
    """
    from m365_3cx.graph.presence import RequestBudget, read_presences

    teams = settings.presence.teams
    if not (settings.presence.enabled and teams.enabled):
        return {"enabled": False}
    with engine.connect() as conn:
        ids = [u.user_id for u in stage.presence_users(conn)]
        if on_demand_run:
            wanted = trace.on_demand_users(conn, run_key)
            ids = [uid for uid in ids if uid in wanted]
    budget = RequestBudget(teams.requests_per_30s, sleep=graph.wait)
    stale = now - timedelta(minutes=teams.max_age_minutes)
    counts = {"users": len(ids), "requests": 0, "staged": 0, "dropped": 0}
    for asked, presences in read_presences(graph, ids, budget):
        rows = [{"user_id": p.user_id, "availability": p.availability, "activity": p.activity} for p in presences]
        with engine.begin() as conn:
            staged, dropped = stage.save_teams_presence(conn, rows, run_key, now, polled=asked, stale_before=stale)
        counts["requests"] += 1
        counts["staged"] += staged
        counts["dropped"] += dropped
    log.info("presence: Teams presence of %d users read in %d request(s) (%.1f s waited for the budget)",
             counts["staged"], counts["requests"], budget.waited)
    return {**counts, "waited": round(budget.waited, 1)}


def _save_event_notes(conn: Any, findings: list[tuple[str, str, Any]], run_key: str, now: datetime) -> None:
    """Notes of the staging boundary about events (in the transaction of their rows), replaced per event."""
    from m365_3cx.pipeline.users import SANITIZE_STEP
    from m365_3cx.transform.notes import ERROR, WARNING, Note, note_rows

    notes = [Note("event", f"{user_id}/{event_id}"[:256], user_id, finding.field,
                  ERROR if finding.rejected else WARNING,
                  f"event {event_id} of user {user_id}: {finding.field}: {finding.message}")
             for user_id, event_id, finding in findings]
    log.warning("presence: %d event values cleaned or refused at the staging boundary (see sync_notes)", len(notes))
    add_record_notes(conn, run_key, note_rows(notes, run_key, now), step=SANITIZE_STEP, object_type="event",
                     object_keys={n.object_key for n in notes}, now=now)


def compute_presence(
    engine: Engine, threecx: ThreeCXClient, settings: Settings, run_key: str, now: datetime, *, dry_run: bool = False,
    only_user_ids: Collection[str] | None = None, incremental: bool = False,
) -> dict[str, Any]:
    """Decide the managed users' profiles at ``now``, store ``tgt_presence`` and plan every user's switch.

    Reads the PBX's profile names (the mapping is checked against them) and every user's
    ``CurrentProfileName`` in one paged read (a delta run: only the users whose plan can need it,
    by id; see :func:`_read_current`), then applies the respect/override rule of
    :mod:`m365_3cx.reconcile.presence`. The plan goes to ``sync_plan`` (object type ``presence``,
    run key :func:`presence_plan_key`) before anything is written. Users whose 3CX status already
    equals the desired default while ``presence_state`` holds another profile get the default
    recorded as the sync's baseline (not in a dry run).

    :param now: the real current time (UTC), never a logical date.
    :param dry_run: record no baselines.
    :param only_user_ids: an on-demand run's users: decide and plan only theirs, and trace it.
    :param incremental: a delta run: decide only the users whose decision can differ from the stored
        one (:mod:`m365_3cx.pipeline.presence_decide`); the others keep it. The plan covers everyone;
        a status changed by hand in 3CX for a user with no such change is left to the next whole read.
    :return: counts: users, decided (afresh), scope, switch, unchanged, respected, and the reasons' tallies.
    :raises ConfigError: the mapping names a profile the PBX does not have.
    """
    from m365_3cx.pipeline.presence_decide import decide_users, store_decisions
    from m365_3cx.reconcile.presence import plan_row, plan_switches
    from m365_3cx.transform.presence import check_mapping_against_pbx

    presence = settings.presence
    if not presence.enabled:
        if only_user_ids is not None:
            _trace_decisions(engine, run_key, now, {}, None)
        return {"enabled": False}
    from m365_3cx.pipeline.safety import write_gate

    dry_run = write_gate(engine, run_key, dry_run, step="compute_presence").dry_run
    mapping = dict(presence.mapping)
    teams_mapping = dict(presence.teams.mapping) if presence.teams.enabled else {}
    check_mapping_against_pbx({**mapping, **{f"teams.{k}": v for k, v in teams_mapping.items()}},
                              threecx.profile_names())
    with engine.connect() as conn:
        users = stage.presence_users(conn)
        if only_user_ids is not None:
            wanted = set(only_user_ids)
            users = [u for u in users if u.user_id in wanted]
        state = stage.load_state(conn)
    decisions = decide_users(engine, settings, users, now, incremental=incremental and only_user_ids is None)
    last_set = {uid: row["profile"] for uid, row in state.items()}
    current, unread = _read_current(threecx, decisions, state, len(users))
    plan = plan_switches(decisions.desired, current, last_set, str(mapping["default"]), presence.mode,
                         unread=unread)
    with engine.begin() as conn:
        store_decisions(conn, decisions, run_key, now, all_users=only_user_ids is None)
        save_plan(conn, presence_plan_key(run_key), [plan_row(s) for s in plan.switches])
        if not dry_run:
            stage.save_states(conn, list(plan.baselines), "baseline", run_key, now)
    if only_user_ids is not None:
        planned = {s.user_id for s in plan.switches}
        decided = {t.user_id: {"profile": t.profile, "reason": t.reason, "current": current.get(t.threecx_id),
                               "switch": t.user_id in planned} for t in decisions.desired}
        _trace_decisions(engine, run_key, now, decided, presence.mode)
    log_plan_preview(log, "status", plan.switches, settings.logs.plan_preview)
    counts = {"users": len(users), "decided": len(decisions.targets), "scope": decisions.scope,
              "switch": len(plan.switches), "unchanged": plan.unchanged,
              "respected": len(plan.respected), "baseline": len(plan.baselines), "reasons": decisions.reasons}
    log.info("presence: %d users, %d switches planned, %d unchanged, %d manual statuses respected",
             counts["users"], counts["switch"], counts["unchanged"], counts["respected"])
    return counts


def _read_current(threecx: ThreeCXClient, decisions: Decisions, state: dict[str, dict[str, Any]],
                  managed: int) -> tuple[dict[int, str | None], set[str]]:
    """The users' ``CurrentProfileName`` by 3CX id, and the Graph ids of the users left unread.

    A run that decided everyone (full, hourly, on demand, changed settings) reads every user (one
    paged read). An incremental one reads by id only the users :func:`needs_current` names (decided
    afresh, desired profile not the one the sync last set on that 3CX user, no state), unless that
    takes as many requests as the paged read; the others are planned as unchanged.

    :param managed: the number of managed users (a lower bound of the paged read's users).
    """
    from m365_3cx.reconcile.presence import needs_current
    from m365_3cx.threecx.paging import MAX_PAGE_SIZE

    def profiles(pages: Iterable[list[dict[str, Any]]]) -> dict[int, str | None]:
        return {int(u["Id"]): u.get("CurrentProfileName") for page in pages for u in page
                if isinstance(u.get("Id"), int)}

    if decisions.scope == "incremental":
        fresh = {t["user_id"] for t in decisions.targets}
        last = {uid: (row["threecx_id"], row["profile"]) for uid, row in state.items()}
        wanted = [w for w in decisions.desired if needs_current(w, last.get(w.user_id), w.user_id in fresh)]
        if math.ceil(len(wanted) / BY_ID_CHUNK) <= math.ceil(managed / MAX_PAGE_SIZE):
            current = profiles(threecx.user_profiles_by_ids({w.threecx_id for w in wanted}, chunk=BY_ID_CHUNK))
            unread = {w.user_id for w in decisions.desired} - {w.user_id for w in wanted}
            log.info("presence: current profile of %d of %d users read by id; %d planned as unchanged",
                     len(wanted), len(decisions.desired), len(unread))
            return current, unread
    return profiles(threecx.list_user_profiles()), set()


def _trace_decisions(engine: Engine, run_key: str, now: datetime, decided: dict[str, dict[str, Any]],
                     mode: str | None) -> None:
    """The ``status_decide`` trace step: the profile due now per on-demand user, or why none."""
    with engine.begin() as conn:
        users = trace.on_demand_users(conn, run_key)
        rows = []
        for uid, upn in sorted(users.items()):
            if mode is None:
                rows.append({"user_id": uid, "upn": upn, "outcome": "off",
                             "detail": {"reason": "presence.enabled is off"}})
            elif uid not in decided:
                rows.append({"user_id": uid, "upn": upn, "outcome": "none", "detail": {
                    "reason": "no active managed extension with a mail address (or not in scope)"}})
            else:
                rows.append({"user_id": uid, "upn": upn, "outcome": str(decided[uid]["profile"]),
                             "detail": {**decided[uid], "mode": mode}})
        trace.replace_trace(conn, run_key, "status_decide", trace.trace_rows(run_key, "status_decide", rows, now))


def presence_plan_key(run_key: str) -> str:
    """The ``sync_plan`` run key of a run's presence switches: ``"<run key>#presence"``.

    Kept apart from the run's extensions plan, which :func:`save_plan` replaces as a whole
    (the two are planned in parallel in the delta DAG). Audit rows use the run key itself.
    """
    return f"{run_key[:240]}#presence"


def apply_presence(
    engine: Engine,
    threecx: ThreeCXClient,
    settings: Settings,
    run_key: str,
    now: datetime,
    *,
    dry_run: bool,
) -> dict[str, Any]:
    """Write this run's planned profile switches, auditing each; record what the sync set.

    A planned switch whose decision expired before it could be applied (its user's
    ``next_switch_at`` has passed, e.g. a retry long after the plan) is skipped: the next run
    recomputes it, so no status from the past is ever applied. Dry runs write nothing to 3CX,
    ``sync_audit`` or ``presence_state``.

    :param now: the real current time (UTC).
    :return: counts: switched, failed, skipped, stale.
    :raises RetriableError: the PBX kept failing transiently (the task retries; nothing repeats).
    """
    from m365_3cx.reconcile.presence import FIELD, ProfileSwitch, SwitchOutcome, apply_switches, audit_row

    if not settings.presence.enabled:
        return {"enabled": False}
    from m365_3cx.pipeline.safety import write_gate

    dry_run = write_gate(engine, run_key, dry_run, step="apply_presence").dry_run
    plan_key = presence_plan_key(run_key)
    with engine.connect() as conn:
        rows = [r for r in load_plan(conn, plan_key, statuses=OPEN_STATUSES)
                if r["object_type"] == "presence"]
        targets = stage.load_targets(conn)
    switches: list[tuple[int, ProfileSwitch]] = []
    stale: list[int] = []
    for row in rows:
        before, after = (row["changes"] or {}).get(FIELD, [None, None])
        target = targets.get(row["object_key"]) or {}
        expires = target.get("next_switch_at")
        if target.get("profile") != after or (expires is not None and expires <= now):
            stale.append(row["seq"])
            continue
        reason = (row["reason"] or "").removeprefix("calendar: ").removeprefix("presence: ")
        switch = ProfileSwitch(row["object_key"], int(row["threecx_id"]), row["number"] or "", before, str(after),
                               reason)
        switches.append((row["seq"], switch))
    if stale:
        with engine.begin() as conn:
            set_plan_statuses(conn, plan_key, dict.fromkeys(stale, "skipped"))
    seq_of = {id(s): seq for seq, s in switches}

    def record(outcomes: list[SwitchOutcome]) -> None:
        with engine.begin() as conn:
            reached = record_outcomes(
                conn, plan_key=plan_key, dry_run=dry_run,
                outcomes=[(seq_of[id(o.switch)], o.result, [audit_row(o, run_key, now)]) for o in outcomes])
            stage.save_states(conn, [(o.switch.user_id, o.switch.threecx_id, o.switch.after)
                                     for o, ok in zip(outcomes, reached, strict=True) if ok], "set", run_key, now)

    counts: dict[str, Any] = apply_switches([s for _, s in switches], threecx, on_outcomes=record, dry_run=dry_run,
                                            concurrency=settings.threecx.write_concurrency)
    counts["stale"] = len(stale)
    log.info("presence apply%s: %d switched, %d failed, %d stale",
             " (dry run)" if dry_run else "", counts["switched"], counts["failed"], len(stale))
    return counts
