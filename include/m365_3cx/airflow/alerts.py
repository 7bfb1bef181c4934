"""DAG-level failure notifier: e-mails the failed task, run and a one-line reason.

Configured by the ``alerts`` section of the settings Variable; off by default. It never
raises: an alert that cannot be sent is logged, and the run's own failure stays visible.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

from m365_3cx.alerts import FailureAlert, build_alert

log = logging.getLogger(__name__)


def _failed_task(context: Any) -> str | None:
    ti = context.get("task_instance") or context.get("ti")
    if ti is None:
        return None
    map_index = getattr(ti, "map_index", -1)
    return f"{ti.task_id}[{map_index}]" if map_index not in (None, -1) else ti.task_id


def alert_from_context(context: Any, base_url: str | None) -> FailureAlert:
    """The facts of the failed run, from an Airflow callback context."""
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None) or "unknown DAG"
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id") or "unknown run"
    exception = context.get("exception")
    reason = str(exception) if exception else context.get("reason")
    return FailureAlert(dag_id=dag_id, run_id=run_id, task_id=_failed_task(context), reason=reason,
                        base_url=base_url)


class SyncFailureNotifier(BaseNotifier):
    """Send a failure alert through the channel the settings choose (``off`` or ``smtp``)."""

    def notify(self, context: Any) -> None:
        try:
            from m365_3cx.airflow.runtime import load_settings

            alerts = load_settings().alerts
            if alerts.channel == "off" or not alerts.to:
                log.info("failure alert not sent: alerts are off")
                return
            subject, body = build_alert(alert_from_context(context, alerts.base_url))
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            with SmtpHook(smtp_conn_id=alerts.smtp_conn_id) as smtp:
                smtp.send_email_smtp(to=list(alerts.to), subject=subject, html_content=body,
                                     from_email=alerts.from_email)
            log.info("failure alert sent to %d recipient(s)", len(alerts.to))
        except Exception as exc:  # an alert must never mask the failure it reports
            log.error("failure alert could not be sent: %s", type(exc).__name__)
