"""What every task needs from Airflow: settings, clients, the run's identity, error mapping."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import Variable, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from m365_3cx.errors import FatalError

if TYPE_CHECKING:
    from m365_3cx.pipeline.users import RunInfo
    from m365_3cx.settings import Settings

log = logging.getLogger(__name__)

SETTINGS_VARIABLE = "m365_3cx_settings"


def load_settings() -> Settings:
    """Read and validate the ``m365_3cx_settings`` Variable (defaults when it is absent).

    :raises AirflowFailException: when the settings are invalid (retrying cannot help).
    """
    from m365_3cx.settings import Settings

    raw = Variable.get(SETTINGS_VARIABLE, default=None)
    with fatal_errors_fail_the_task():
        return Settings.from_json(raw) if raw else Settings.from_mapping(None)


def run_info(context: Any, mode: str) -> RunInfo:
    """The staging identity of the current DAG run, from the task context."""
    from m365_3cx.pipeline.users import RunInfo

    params = context.get("params") or {}
    return RunInfo.create(context["dag"].dag_id, context["run_id"], mode, bool(params.get("dry_run", False)))


def on_demand_entries(context: Any) -> list[str]:
    """The run's ``only_users`` entries when it is a provision-on-demand run, else ``[]``.

    Only a DAG that extracts users runs on demand (the hourly status DAG ignores ``only_users``).
    """
    from m365_3cx.pipeline.ondemand import parse_entries

    params = context.get("params") or {}
    dag = context.get("dag")
    if dag is None or "extract_users" not in getattr(dag, "task_dict", {}):
        return []
    return parse_entries(params.get("only_users"))


def utcnow() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def staging_engine() -> Iterator[Any]:
    """The staging database engine (schema ensured) for the duration of a task step."""
    from m365_3cx.airflow.hooks import StagingHook

    engine = StagingHook().get_engine()
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def api_client(hook: Any, settings: Settings | None = None) -> Iterator[Any]:
    """A hook's client (Graph or 3CX), configured from ``settings``, closed at the end of the step."""
    client = hook.get_client(settings)
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class TaskStep:
    """What a task body works with (see :func:`task_step`)."""

    context: Any
    run: RunInfo
    settings: Settings
    engine: Any
    client: Any = None

    @property
    def params(self) -> dict[str, Any]:
        """The DAG run's params (``{}`` when it has none)."""
        return self.context.get("params") or {}


@contextlib.contextmanager
def task_step(mode: str, *, lease: tuple[str, str] | None = None, client: type | None = None) -> Iterator[TaskStep]:
    """The preamble every task body shares: context -> run info -> settings -> engine -> client.

    Fatal errors inside fail the task without retries (:func:`fatal_errors_fail_the_task`).

    :param mode: the run's mode (:func:`run_info`).
    :param lease: ``(feature, step)`` to hold while the body runs (:func:`feature_lease`).
    :param client: a hook class (``GraphHook`` or ``ThreeCXHook``) whose client the body needs,
        closed at the end (:func:`api_client`).
    """
    context = get_current_context()
    run = run_info(context, mode)
    settings = load_settings()
    with fatal_errors_fail_the_task(), staging_engine() as engine, contextlib.ExitStack() as stack:
        if lease is not None:
            stack.enter_context(feature_lease(engine, lease[0], run.run_key, lease[1], settings))
        api = stack.enter_context(api_client(client(), settings)) if client is not None else None
        yield TaskStep(context, run, settings, engine, api)


#: Apply counts that mean 3CX was written.
_WRITE_COUNTS = ("created", "updated", "disabled", "deleted", "switched")


def wrote_anything(counts: Any) -> bool:
    """Whether an apply step's counts report a 3CX write."""
    return isinstance(counts, dict) and any(int(counts.get(k) or 0) > 0 for k in _WRITE_COUNTS)


@contextlib.contextmanager
def feature_lease(engine: Any, feature: str, run_key: str, step: str, settings: Settings) -> Iterator[None]:
    """Hold ``feature`` for the run during one of its leased steps (:mod:`m365_3cx.staging.lease`).

    ``snapshot`` takes the lease, ``plan``/``approval``/``apply`` renew it. A fatal error releases
    it (the run will not go on); a retriable one keeps it for the task's retry. The apply step
    releases it itself (:func:`release_feature`).

    :raises FeatureBusyError: another run holds the feature after the configured wait (retriable).
    :raises StalePlanError: another run applied changes since this run's snapshot (fatal).
    """
    from datetime import timedelta

    from m365_3cx.staging import lease

    options = {"now": utcnow, "ttl": timedelta(minutes=settings.guards.lease_ttl_minutes),
               "wait": float(settings.guards.lease_wait_seconds)}
    if step == "snapshot":
        lease.acquire(engine, feature, run_key, step=step, **options)
    else:
        try:
            lease.resume(engine, feature, run_key, step=step, **options)
        except lease.StalePlanError:
            lease.release(engine, feature, run_key, wrote=False)
            raise
    try:
        yield
    except FatalError:
        lease.release(engine, feature, run_key, wrote=step == "apply")
        raise


def release_feature(engine: Any, feature: str, run_key: str, counts: Any) -> None:
    """Free ``feature`` after the run's apply step (bumping its generation when 3CX was written)."""
    from m365_3cx.staging import lease

    lease.release(engine, feature, run_key, wrote=wrote_anything(counts))


#: Lease feature of each plan object type (``sync_plan.object_type``).
FEATURE_OF = {"extension": "extensions", "contact": "phonebook", "presence": "presence"}


def park_feature(engine: Any, object_type: str, run_key: str) -> bool:
    """Free the run's lease of ``object_type``'s feature while it waits for an approval.

    Call it from the approval task right before it defers: other runs (the 5-minute delta) go on
    meanwhile, and the run's apply re-validates its plan when it resumes (a plan made stale by
    another run's writes is refused; see :func:`m365_3cx.staging.lease.park`).

    :param object_type: ``extension``, ``contact`` or ``presence``.
    :return: whether the run held the lease.
    """
    from m365_3cx.staging import lease

    return lease.park(engine, FEATURE_OF[object_type], run_key)


@contextlib.contextmanager
def fatal_errors_fail_the_task() -> Iterator[None]:
    """Turn :class:`~m365_3cx.errors.FatalError` into ``AirflowFailException`` (no retries).

    Retriable errors propagate unchanged, so the task's retries (with exponential
    backoff) handle throttling and outages that outlast the clients' own retries.
    """
    try:
        yield
    except FatalError as exc:
        log.error("fatal: %s", exc)
        raise AirflowFailException(str(exc)) from None
