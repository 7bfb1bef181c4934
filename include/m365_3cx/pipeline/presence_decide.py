"""Deciding the managed users' profiles, on delta runs only for the users whose decision can differ.

A stored decision (``tgt_presence``) stays exactly what deciding again would give as long as
(1) the user's inputs did not change: the extracts bump ``presence_inputs.version`` with every
staged change of the user's events, automatic replies or Teams presence (and when a stale Teams
presence becomes current again), and the decision records the version it saw
(``inputs_version``); (2) no span of the user started or ended since: ``recheck_at`` is the next
such instant (:attr:`m365_3cx.transform.presence.PresenceDecision.recheck_at`), so between two
boundaries the winner, the reason and ``next_switch_at`` are all constant; (3) a Teams presence
the decision used has not aged out (``presence.teams.max_age_minutes``); (4) the settings that
shape decisions are the same (a fingerprint in ``transform_state``, feature ``presence``).

An incremental decision therefore re-decides: users never decided (or decided by older code),
users whose version moved, users whose ``recheck_at`` is due, users whose Teams decision aged out,
and everyone when the fingerprint changed. Everyone else keeps the stored decision; the plan
(:func:`m365_3cx.reconcile.presence.plan_switches`) reads the 3CX current profile of the users
decided afresh and of those whose desired profile is not what the sync last set
(:func:`m365_3cx.reconcile.presence.needs_current`), so a status changed in 3CX by hand for a
user with no change is seen by the next hourly or full run (a whole read), not by the delta.
The version is read before the inputs, so a change staged meanwhile (an overlapping run's extract)
leaves the stored version behind and the next run decides that user again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from m365_3cx.staging import phonebook_sources as basis
from m365_3cx.staging import presence as stage

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from m365_3cx.reconcile.presence import DesiredProfile
    from m365_3cx.settings import Settings
    from m365_3cx.staging.presence import PresenceUser

__all__ = ["FEATURE", "Decisions", "decide_users", "decision_fingerprint", "store_decisions"]

log = logging.getLogger(__name__)

FEATURE: Final = "presence"
"""``transform_state.feature`` of the presence decisions."""

EVENT_CHUNK: Final = 1000
"""Users whose staged events are held in memory at once."""


@dataclass
class Decisions:
    """The decision of every user asked for, and which of them were decided afresh.

    :param desired: every user's desired profile (fresh or stored), ordered like the users.
    :param targets: ``tgt_presence`` rows of the users decided afresh (to store).
    :param kept: ``user_id -> stored row`` of the users that kept their decision.
    :param scope: ``full`` (everyone decided) or ``incremental``.
    :param fingerprint: :func:`decision_fingerprint` of the settings used.
    """

    desired: list[DesiredProfile] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    scope: str = "full"
    fingerprint: str = ""
    basis_matches: bool = False


def decision_fingerprint(settings: Settings) -> str:
    """A hash of the settings a decision depends on (mappings, Teams switch and maximum age)."""
    presence = settings.presence
    teams = presence.teams
    shape = {"mapping": dict(presence.mapping), "teams": teams.enabled,
             "teams_mapping": dict(teams.mapping) if teams.enabled else {},
             "teams_max_age": teams.max_age_minutes if teams.enabled else None}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def _needs_decision(stored: dict[str, Any] | None, version: int, now: datetime, teams_current: bool) -> bool:
    if stored is None or stored.get("inputs_version") is None or int(stored["inputs_version"]) != version:
        return True
    recheck = stored.get("recheck_at")
    if recheck is not None and recheck <= now:
        return True
    return str(stored.get("reason") or "").startswith("teams:") and not teams_current


def decide_users(engine: Engine, settings: Settings, users: Sequence[PresenceUser], now: datetime, *,
                 incremental: bool) -> Decisions:
    """Decide ``users`` at ``now``: all of them, or (``incremental``) just those whose decision can differ.

    :param incremental: keep every stored decision that is still valid (see the module text);
        falls back to deciding everyone when the settings fingerprint is not the stored one.
    :raises ValueError: naive ``now``.
    """
    from m365_3cx.reconcile.presence import DesiredProfile
    from m365_3cx.transform.presence import AutoReplies, TeamsPresence, decide, teams_profile

    presence = settings.presence
    mapping = dict(presence.mapping)
    teams_mapping = dict(presence.teams.mapping) if presence.teams.enabled else {}
    out = Decisions(fingerprint=decision_fingerprint(settings))
    with engine.connect() as conn:
        versions = stage.load_input_versions(conn)  # before the inputs: see the module text
        polled = (stage.load_teams_presence(conn, now - timedelta(minutes=presence.teams.max_age_minutes))
                  if presence.teams.enabled else {})
        known = basis.transform_basis(conn, FEATURE)
        out.basis_matches = known is not None and known["params_hash"] == out.fingerprint
        stored: dict[str, dict[str, Any]] = {}
        if incremental and out.basis_matches:
            stored = stage.load_targets(conn)
            out.scope = "incremental"
    to_decide = [u for u in users if out.scope == "full" or _needs_decision(
        stored.get(u.user_id), versions.get(u.user_id, 0), now, u.user_id in polled)]
    fresh: dict[str, DesiredProfile] = {}
    for start in range(0, len(to_decide), EVENT_CHUNK):  # events are read a chunk of users at a time
        chunk = to_decide[start:start + EVENT_CHUNK]
        ids = [u.user_id for u in chunk]
        with engine.connect() as conn:
            events = stage.load_events(conn, ids)
            replies = stage.load_auto_replies(conn, ids)
        for user in chunk:
            rep = replies.get(user.user_id)
            auto = AutoReplies(rep["status"], rep["scheduled_start"], rep["scheduled_end"]) if rep else None
            seen = polled.get(user.user_id)
            teams = teams_profile(TeamsPresence(*seen), teams_mapping) if seen else None
            decision = decide(_event_spans(events.get(user.user_id, [])), auto, mapping, now, teams)
            fresh[user.user_id] = DesiredProfile(user.user_id, user.threecx_id, user.number, decision.profile,
                                                 decision.reason)
            out.targets.append({"user_id": user.user_id, "threecx_id": user.threecx_id,
                                "profile": decision.profile, "reason": decision.reason,
                                "next_switch_at": decision.next_switch_at,
                                "inputs_version": versions.get(user.user_id, 0),
                                "recheck_at": decision.recheck_at})
    for user in users:
        want = fresh.get(user.user_id)
        if want is None:
            row = stored[user.user_id]
            out.kept[user.user_id] = row
            want = DesiredProfile(user.user_id, user.threecx_id, user.number, str(row["profile"]),
                                  str(row["reason"]))
        out.desired.append(want)
        out.reasons[want.reason] = out.reasons.get(want.reason, 0) + 1
    log.info("presence: %d of %d users decided (%s), %d kept their stored decision",
             len(fresh), len(users), out.scope, len(out.kept))
    return out


def store_decisions(conn: Connection, decisions: Decisions, run_key: str, now: datetime, *,
                    all_users: bool) -> None:
    """Store the fresh decisions; record the fingerprint when every managed user was decided with it.

    A few users decided with settings other than the recorded ones (an on-demand run after a
    settings change) are stored without ``inputs_version``, so the next run decides them again.

    :param all_users: the decisions cover every managed user (not an on-demand run's few).
    """
    targets = decisions.targets
    if not all_users and not decisions.basis_matches:
        targets = [{**row, "inputs_version": None} for row in targets]
    stage.save_targets(conn, targets, run_key, now)
    if all_users and decisions.scope == "full":
        basis.set_transform_basis(conn, FEATURE, decisions.fingerprint, "full", run_key, now)


def _event_spans(rows: list[dict[str, Any]]) -> list[Any]:
    from m365_3cx.transform.presence import EventSpan

    return [
        EventSpan(row["event_id"], row["start_utc"], row["end_utc"], row["show_as"], bool(row["is_all_day"]),
                  row["time_zone"], bool(row["is_cancelled"]))
        for row in rows if row["start_utc"] is not None and row["end_utc"] is not None
    ]
