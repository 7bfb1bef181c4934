"""Run exclusion across DAGs: one run at a time snapshots, plans and applies a feature.

Snapshot, plan and apply are separate Airflow tasks (separate processes, possibly on
different Celery workers), so a session lock cannot span them. A *lease* held in staging
does: one ``feature_lease`` row per feature (``extensions``, ``phonebook``, ``presence``).

* **snapshot** (:func:`acquire`): takes the lease for the run (free, expired, or already the
  run's own, e.g. a task retry) and records in ``feature_claim`` the feature's
  ``generation`` the snapshot is based on;
* **plan / apply** (:func:`resume`): renews it; the run's own lease, or a free/expired one
  whose generation is still the one the run's snapshot saw, is (re)taken;
* **after apply** (:func:`release`): frees it, bumping ``generation`` when the apply wrote
  anything, and forgets the claim; a fatal failure of any leased step releases it too;
* **waiting for approval** (:func:`park`): frees the lease but keeps the claim, so other runs
  (the 5-minute delta) go on; at apply :func:`resume` refuses the parked plan when another run
  applied changes to the feature meanwhile (:class:`StalePlanError`: its snapshot is stale).

Every lease expires ``ttl`` after its last renewal, so a killed worker never blocks the
feature for longer. A run that finds the feature held waits up to ``wait`` seconds
(polling), then raises :class:`FeatureBusyError` naming the holder run — a retriable error,
so the task's retries (exponential backoff) try again later.

On PostgreSQL each take runs in a transaction holding ``pg_advisory_xact_lock`` for the
feature (then ``SELECT … FOR UPDATE``), so two runs never take the same free lease. SQLite
(the single-process demo) has no advisory locks; its ``BEGIN IMMEDIATE`` transactions
(:mod:`m365_3cx.staging.db`) already serialise writers, which is all a single process needs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from m365_3cx.errors import FatalError, RetriableError
from m365_3cx.staging.schema import feature_claim, feature_lease

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "DEFAULT_TTL",
    "DEFAULT_WAIT",
    "FEATURES",
    "FeatureBusyError",
    "Lease",
    "StalePlanError",
    "acquire",
    "holder_of",
    "park",
    "release",
    "resume",
]

log = logging.getLogger(__name__)

FEATURES: Final = ("extensions", "phonebook", "presence")
"""The features a lease protects (each one's snapshot -> plan -> apply)."""

DEFAULT_TTL: Final = dt.timedelta(minutes=45)
"""A lease lasts this long after its last renewal (each step renews; a task times out at 30 min)."""

DEFAULT_WAIT: Final = 120.0
"""Seconds a step waits for a held feature before failing (retriable)."""

_POLL: Final = 2.0


class FeatureBusyError(RetriableError):
    """Another run holds the feature; the task is retried later.

    :param feature: the feature.
    :param holder: the run key holding it.
    :param expires_at: when its lease expires unless renewed.
    """

    def __init__(self, feature: str, holder: str, expires_at: dt.datetime | None, waited: float) -> None:
        until = expires_at.isoformat(timespec="seconds") if expires_at else "unknown"
        super().__init__(f"{feature} is being synced by run {holder} (lease until {until}); waited {waited:.0f}s, "
                         "this run retries later")
        self.feature, self.holder, self.expires_at = feature, holder, expires_at


class StalePlanError(FatalError):
    """The run's snapshot is stale: another run applied changes to the feature after it."""


@dataclass(frozen=True)
class Lease:
    """A lease held by a run.

    :param feature: the feature.
    :param run_key: the holder.
    :param expires_at: when it expires unless renewed.
    :param generation: the feature's generation the run's snapshot saw.
    """

    feature: str
    run_key: str
    expires_at: dt.datetime
    generation: int


def _lock_key(feature: str) -> int:
    """A stable signed 64-bit advisory lock key per feature."""
    digest = hashlib.sha256(f"m365_3cx.feature_lease:{feature}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _check(feature: str) -> None:
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r} (known: {', '.join(FEATURES)})")


def _locked_row(conn: Connection, feature: str) -> sa.Row:
    """The feature's lease row, created if missing, locked for this transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(feature)})
    row = conn.execute(sa.select(feature_lease).where(feature_lease.c.feature == feature).with_for_update()).first()
    if row is None:
        conn.execute(feature_lease.insert().values(feature=feature, generation=0))
        row = conn.execute(sa.select(feature_lease).where(feature_lease.c.feature == feature)).one()
    return row


def _held_by_other(row: sa.Row, run_key: str, now: dt.datetime) -> bool:
    return row.holder is not None and row.holder != run_key and row.expires_at is not None and row.expires_at > now


def _take(conn: Connection, feature: str, run_key: str, step: str, now: dt.datetime, ttl: dt.timedelta,
          row: sa.Row) -> dt.datetime:
    expires = now + ttl
    values: dict[str, object] = {"holder": run_key, "step": step, "expires_at": expires}
    if row.holder != run_key:
        values["acquired_at"] = now
    conn.execute(feature_lease.update().where(feature_lease.c.feature == feature).values(**values))
    return expires


def _claim(conn: Connection, feature: str, run_key: str) -> int | None:
    return conn.execute(sa.select(feature_claim.c.generation).where(
        feature_claim.c.feature == feature, feature_claim.c.run_key == run_key)).scalar()


def _wait_loop(engine: Engine, feature: str, attempt: Callable[[Connection], Lease | sa.Row], wait: float,
               clock: Callable[[], float], sleep: Callable[[float], None]) -> Lease:
    started = clock()
    logged = False
    while True:
        with engine.begin() as conn:
            result = attempt(conn)
        if isinstance(result, Lease):
            return result
        waited = clock() - started
        if waited >= wait:
            raise FeatureBusyError(feature, str(result.holder), result.expires_at, waited)
        if not logged:
            log.info("%s is held by run %s (step %s); waiting up to %.0fs", feature, result.holder, result.step, wait)
            logged = True
        sleep(min(_POLL, max(0.05, wait - waited)))


def acquire(engine: Engine, feature: str, run_key: str, *, step: str = "snapshot", now: Callable[[], dt.datetime],
            ttl: dt.timedelta = DEFAULT_TTL, wait: float = DEFAULT_WAIT, clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> Lease:
    """Take the feature for ``run_key`` at its snapshot, waiting up to ``wait`` seconds.

    :param now: the current UTC time (called on every attempt).
    :return: the lease (its ``generation`` is recorded as the run's claim).
    :raises FeatureBusyError: another run still holds it after ``wait`` seconds.
    """
    _check(feature)

    def attempt(conn: Connection) -> Lease | sa.Row:
        at = now()
        row = _locked_row(conn, feature)
        if _held_by_other(row, run_key, at):
            return row
        if row.holder is not None and row.holder != run_key:
            log.warning("%s: lease of run %s expired at %s; taken over by run %s", feature, row.holder,
                        row.expires_at, run_key)
        expires = _take(conn, feature, run_key, step, at, ttl, row)
        conn.execute(feature_claim.delete().where(feature_claim.c.feature == feature,
                                                  feature_claim.c.run_key == run_key))
        conn.execute(feature_claim.insert().values(feature=feature, run_key=run_key, generation=row.generation,
                                                   claimed_at=at))
        return Lease(feature, run_key, expires, int(row.generation))

    lease = _wait_loop(engine, feature, attempt, wait, clock, sleep)
    log.info("%s: lease taken by run %s at %s (generation %d)", feature, run_key, step, lease.generation)
    return lease


def resume(engine: Engine, feature: str, run_key: str, *, step: str, now: Callable[[], dt.datetime],
           ttl: dt.timedelta = DEFAULT_TTL, wait: float = DEFAULT_WAIT, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Lease:
    """Renew (or re-take) the run's lease at a later step (plan, apply).

    :raises FeatureBusyError: another run holds the feature after ``wait`` seconds (e.g. this
        run's lease expired or was parked, and another run took it).
    :raises StalePlanError: the run has no snapshot claim, or another run applied changes to the
        feature since this run's snapshot (its plan is stale; run it again).
    """
    _check(feature)

    def attempt(conn: Connection) -> Lease | sa.Row:
        at = now()
        row = _locked_row(conn, feature)
        if _held_by_other(row, run_key, at):
            return row
        seen = _claim(conn, feature, run_key)
        if seen is None:
            raise StalePlanError(f"{feature}: run {run_key} has no snapshot lease (its snapshot step did not run "
                                 "or its lease was released); run the sync again")
        if int(seen) != int(row.generation):
            raise StalePlanError(f"{feature}: another run applied changes after the snapshot of run {run_key}; "
                                 "its plan is stale and was not applied — run the sync again")
        expires = _take(conn, feature, run_key, step, at, ttl, row)
        return Lease(feature, run_key, expires, int(seen))

    return _wait_loop(engine, feature, attempt, wait, clock, sleep)


def release(engine: Engine, feature: str, run_key: str, *, wrote: bool) -> bool:
    """Free the feature after the run's apply (or on its fatal failure) and forget its claim.

    :param wrote: the apply changed 3CX (bumps the generation, so parked plans become stale).
    :return: whether the run held the lease.
    """
    _check(feature)
    with engine.begin() as conn:
        row = _locked_row(conn, feature)
        held = row.holder == run_key
        values: dict[str, object] = {}
        if held:
            values.update(holder=None, step=None, expires_at=None)
        if wrote:
            values["generation"] = int(row.generation) + 1
        if values:
            conn.execute(feature_lease.update().where(feature_lease.c.feature == feature).values(**values))
        conn.execute(feature_claim.delete().where(feature_claim.c.feature == feature,
                                                  feature_claim.c.run_key == run_key))
    if held:
        log.info("%s: lease released by run %s%s", feature, run_key, " (changes applied)" if wrote else "")
    return held


def park(engine: Engine, feature: str, run_key: str) -> bool:
    """Free the feature while the run waits (e.g. for an operator's approval); keep its claim.

    Other runs may sync the feature meanwhile; :func:`resume` at apply re-takes it and refuses
    the plan if one of them applied changes (:class:`StalePlanError`).

    :return: whether the run held the lease.
    """
    _check(feature)
    with engine.begin() as conn:
        row = _locked_row(conn, feature)
        if row.holder != run_key:
            return False
        conn.execute(feature_lease.update().where(feature_lease.c.feature == feature).values(
            holder=None, step="approval", expires_at=None))
    log.info("%s: lease parked by run %s (waiting for approval)", feature, run_key)
    return True


def holder_of(engine: Engine, feature: str, now: dt.datetime) -> str | None:
    """The run key holding ``feature`` now (``None`` when free or expired)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(feature_lease).where(feature_lease.c.feature == feature)).first()
    if row is None or row.holder is None or row.expires_at is None or row.expires_at <= now:
        return None
    return str(row.holder)
