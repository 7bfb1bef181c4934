"""Alerts: the DAG-level failure notifier (failed task, run and the whole scrubbed error) and the
e-mail channel the staleness watchdog shares with it.

Configured by the ``alerts`` section of the settings Variable; off by default. The notifier never
raises: an alert that cannot be sent is logged, and the run's own failure stays visible.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow.sdk import BaseNotifier

from m365_3cx.alerts import FailureAlert, build_alert, full_reason, one_line_reason, scrub

log = logging.getLogger(__name__)


def _failed_task(context: Any) -> str | None:
    ti = context.get("task_instance") or context.get("ti")
    if ti is None:
        return None
    map_index = getattr(ti, "map_index", -1)
    return f"{ti.task_id}[{map_index}]" if map_index not in (None, -1) else ti.task_id


def _run_ids(context: Any) -> tuple[str, str]:
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None) or "unknown DAG"
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id") or "unknown run"
    return dag_id, run_id


def _recorded_error(dag_id: str, run_id: str) -> str | None:
    """The failure reason the failed task recorded in ``sync_runs`` (DAG callbacks get no exception)."""
    import sqlalchemy as sa

    from m365_3cx.airflow.hooks import StagingHook
    from m365_3cx.staging.schema import sync_runs

    engine = StagingHook().get_engine()
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(sync_runs.c.last_error).where(sync_runs.c.run_key == f"{dag_id}/{run_id}"[:250])
            ).scalar()
    finally:
        engine.dispose()


def alert_from_context(context: Any, base_url: str | None) -> FailureAlert:
    """The facts of the failed run, from an Airflow callback context (and the reason its task recorded)."""
    dag_id, run_id = _run_ids(context)
    exception = context.get("exception")
    reason = str(exception) if exception else None
    task_id = _failed_task(context)
    if reason is None:
        try:
            recorded = _recorded_error(dag_id, run_id)
        except Exception as exc:
            log.warning("could not read the recorded failure reason: %s", type(exc).__name__)
            recorded = None
        if recorded:
            task_id, _, reason = recorded.partition(": ") if ": " in recorded else (task_id, "", recorded)
    return FailureAlert(dag_id=dag_id, run_id=run_id, task_id=task_id, reason=reason or context.get("reason"),
                        base_url=base_url)


def record_task_failure(context: Any) -> None:
    """Task-level ``on_failure_callback``: store the failed task and the whole scrubbed reason in ``sync_runs``.

    Runs on the worker after the last try, where the exception is known; never raises.
    """
    try:
        from m365_3cx.airflow.hooks import StagingHook
        from m365_3cx.airflow.runtime import utcnow
        from m365_3cx.staging.runs import record_run_error

        dag_id, run_id = _run_ids(context)
        message = f"{_failed_task(context) or 'unknown task'}: {full_reason(str(context.get('exception') or ''))}"
        engine = StagingHook().get_engine()
        try:
            with engine.begin() as conn:
                record_run_error(conn, f"{dag_id}/{run_id}"[:250], message, utcnow())
        finally:
            engine.dispose()
    except Exception as exc:  # a callback must never hide the task's own failure
        log.error("could not record the task failure: %s", type(exc).__name__)


def load_alert_settings() -> Any:
    """The ``alerts`` settings, also when another section of the Variable is invalid.

    A run that failed *because* the settings are invalid must still be reported: when the whole
    document does not validate, the ``alerts`` section is validated on its own.

    :raises ConfigError: the ``alerts`` section itself is invalid (or the Variable is not JSON).
    """
    import json

    from airflow.sdk import Variable

    from m365_3cx.airflow.runtime import SETTINGS_VARIABLE
    from m365_3cx.errors import ConfigError
    from m365_3cx.settings import Settings

    raw = Variable.get(SETTINGS_VARIABLE, default=None)
    try:
        return (Settings.from_json(raw) if raw else Settings()).alerts
    except ConfigError:
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise
        return Settings.from_mapping({"alerts": data.get("alerts") or {}}).alerts


def alert_base_url(alerts: Any) -> str | None:
    """The Airflow UI base URL for links: the setting, else ``AIRFLOW__API__BASE_URL``."""
    return alerts.base_url or os.environ.get("AIRFLOW__API__BASE_URL") or None


def send_email(alerts: Any, subject: str, body: str) -> None:
    """Send one alert e-mail through the configured Airflow SMTP connection.

    :param alerts: the ``alerts`` settings (channel ``smtp``, recipients set).
    :raises Exception: whatever the SMTP connection raises (callers decide whether to swallow it).
    """
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=alerts.smtp_conn_id) as smtp:
        smtp.send_email_smtp(to=list(alerts.to), subject=subject, html_content=body, from_email=alerts.from_email)


class SyncFailureNotifier(BaseNotifier):
    """Send a failure alert through the channel the settings choose (``off`` or ``smtp``)."""

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render: the content is built from the context in :meth:`notify`.

        (The dag processor may hand a serialized DAG without a template environment.)
        """

    def notify(self, context: Any) -> None:
        try:
            alerts = load_alert_settings()
            if alerts.channel == "off" or not alerts.to:
                log.info("failure alert not sent: alerts are off")
                return
            subject, body = build_alert(alert_from_context(context, alert_base_url(alerts)))
            send_email(alerts, subject, body)
            log.info("failure alert sent to %d recipient(s)", len(alerts.to))
        except Exception as exc:  # an alert must never mask the failure it reports
            log.error("failure alert could not be sent: %s: %s", type(exc).__name__, one_line_reason(scrub(str(exc))))


class ApprovalRequestNotifier(BaseNotifier):
    """E-mail the approval request of a run whose removals exceed the guard (same channel as failures).

    Called by the HITL approval task when it parks; the message names the run, the count and the
    task to answer ("Required actions" in the Airflow UI). Never raises.
    """

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render: the content is built from the task in :meth:`notify`."""

    def notify(self, context: Any) -> None:
        try:
            import html

            from m365_3cx.airflow.runtime import load_settings

            alerts = load_settings().alerts
            if alerts.channel == "off" or not alerts.to:
                log.info("approval request not e-mailed: alerts are off")
                return
            dag_id, run_id = _run_ids(context)
            task = context.get("task")
            title = str(getattr(task, "subject", "") or "Approval needed")
            base_url = alerts.base_url or os.environ.get("AIRFLOW__API__BASE_URL") or None
            link = ""
            if base_url and task is not None:
                url = (f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{run_id}/tasks/{task.task_id}/required_actions")
                link = f'<p><a href="{html.escape(url)}">Answer in Airflow (Required actions)</a></p>'
            body = (f"<p>{html.escape(title)}</p><p>DAG <code>{html.escape(dag_id)}</code>, run "
                    f"<code>{html.escape(run_id)}</code>, task <code>{html.escape(getattr(task, 'task_id', '?'))}"
                    f"</code> waits for a decision. Approve applies the removals; Reject, or no answer in time, "
                    f"applies everything else.</p>{link}"
                    f"<pre>{html.escape(str(getattr(task, 'body', '') or ''))}</pre>")
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            with SmtpHook(smtp_conn_id=alerts.smtp_conn_id) as smtp:
                smtp.send_email_smtp(to=list(alerts.to), subject=f"[m365-3cx] approval needed: {dag_id}",
                                     html_content=body, from_email=alerts.from_email)
            log.info("approval request e-mailed to %d recipient(s)", len(alerts.to))
        except Exception as exc:  # a notification must never stop the request itself
            log.error("approval request could not be e-mailed: %s: %s", type(exc).__name__,
                      one_line_reason(scrub(str(exc))))
