"""Failure alert content: what an operator needs in one glance, and never a secret.

Pure formatting (no Airflow, no I/O): the DAGs' failure callback collects the facts and
:func:`build_alert` turns them into a subject and an HTML body.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import quote

_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)\b(client_secret|client_assertion|access_token|refresh_token|password|api[_-]?key|secret)"
               r"(\s*[=:]\s*)([^\s&,;]+)"),
    re.compile(r"(?i)([?&]\$?(?:skiptoken|deltatoken|code|token)=)[^&\s]+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
)
MAX_REASON = 300


@dataclass(frozen=True)
class FailureAlert:
    """The facts of one failed DAG run.

    :param dag_id: the DAG.
    :param run_id: the run.
    :param task_id: the failed task (with map index when mapped), if known.
    :param reason: the error message or Airflow's reason.
    :param base_url: Airflow UI base URL for a link, if configured.
    """

    dag_id: str
    run_id: str
    task_id: str | None
    reason: str | None
    base_url: str | None = None


def scrub(text: str) -> str:
    """Remove anything that looks like a credential or token from ``text``."""
    text = _SECRET_PATTERNS[0].sub(r"\1 ***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1\2***", text)
    text = _SECRET_PATTERNS[2].sub(r"\1***", text)
    return _SECRET_PATTERNS[3].sub("***PRIVATE KEY***", text)


def one_line_reason(reason: str | None) -> str:
    """First non-empty line of the reason, scrubbed and shortened."""
    if not reason:
        return "no reason recorded (see the task log)"
    line = next((part.strip() for part in str(reason).splitlines() if part.strip()), "")
    line = scrub(line)
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


def run_link(alert: FailureAlert) -> str | None:
    """Link to the run in the Airflow UI, when a base URL is configured."""
    if not alert.base_url:
        return None
    return f"{alert.base_url.rstrip('/')}/dags/{quote(alert.dag_id)}/runs/{quote(alert.run_id, safe='')}"


def build_alert(alert: FailureAlert) -> tuple[str, str]:
    """Subject and HTML body of the alert e-mail."""
    reason = one_line_reason(alert.reason)
    task = alert.task_id or "unknown task"
    subject = f"[m365-3cx-sync] {alert.dag_id} failed in {task}"
    rows = [("DAG", alert.dag_id), ("Run", alert.run_id), ("Failed task", task), ("Reason", reason)]
    link = run_link(alert)
    body = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    body = f"<p>A Microsoft 365 to 3CX sync run failed.</p><table>{body}</table>"
    if link:
        body += f"<p><a href='{html.escape(link)}'>Open the run in Airflow</a></p>"
    body += "<p>The sync_runs, sync_plan and sync_audit tables show what was written before the failure.</p>"
    return subject, body
