"""Alert content: what an operator needs in one glance, and never a secret.

Pure formatting (no Airflow, no I/O): the DAGs' failure callback collects the facts and
:func:`build_alert` turns them into a subject and an HTML body; the staleness watchdog uses
:func:`build_stale_alert`. Failure alerts carry the *whole* error (every line, scrubbed), so
"invalid settings (4 problems):" arrives with its four problems.
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
#: Longest error text kept in ``sync_runs.last_error`` and sent in an alert (scrubbed first).
MAX_ERROR = 8000


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


def full_reason(reason: str | None) -> str:
    """The whole reason, every line, scrubbed of secrets, trailing blanks removed, at most :data:`MAX_ERROR`."""
    if not reason or not str(reason).strip():
        return "no reason recorded (see the task log)"
    text = scrub(str(reason).strip())
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def run_link(alert: FailureAlert) -> str | None:
    """Link to the run in the Airflow UI, when a base URL is configured."""
    if not alert.base_url:
        return None
    return f"{alert.base_url.rstrip('/')}/dags/{quote(alert.dag_id)}/runs/{quote(alert.run_id, safe='')}"


def build_alert(alert: FailureAlert) -> tuple[str, str]:
    """Subject and HTML body of the alert e-mail."""
    reason = full_reason(alert.reason)
    task = alert.task_id or "unknown task"
    subject = f"[m365-3cx-sync] {alert.dag_id} failed in {task}"
    rows = [("DAG", alert.dag_id), ("Run", alert.run_id), ("Failed task", task)]
    link = run_link(alert)
    body = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    body = (f"<p>A Microsoft 365 to 3CX sync run failed.</p><table>{body}</table>"
            f"<p><b>Error</b></p><pre>{html.escape(reason)}</pre>")
    if link:
        body += f"<p><a href='{html.escape(link)}'>Open the run in Airflow</a></p>"
    body += "<p>The sync_runs, sync_plan and sync_audit tables show what was written before the failure.</p>"
    return subject, body


#: Feature names of the staleness watchdog, as the operator reads them.
FEATURE_LABELS = {
    "users": "users -> extensions", "phonebook": "contacts -> phonebook", "status": "calendar -> 3CX status",
}


@dataclass(frozen=True)
class StaleAlert:
    """One staleness episode of a feature: opened (``recovered`` false) or closed.

    :param feature: ``users``, ``phonebook`` or ``status``.
    :param dag_ids: the DAGs whose successful run counts for the feature.
    :param last_success: finish time of the last successful run (``None``: none recorded).
    :param age_minutes: minutes since then (or since the watchdog first looked, when never).
    :param threshold_minutes: the configured limit.
    :param recovered: the feature is fresh again (the episode is over).
    :param base_url: Airflow UI base URL for links, if configured.
    """

    feature: str
    dag_ids: tuple[str, ...]
    last_success: str | None
    age_minutes: int
    threshold_minutes: int
    recovered: bool = False
    base_url: str | None = None


def build_stale_alert(alert: StaleAlert) -> tuple[str, str]:
    """Subject and HTML body of a staleness (or recovery) e-mail."""
    label = FEATURE_LABELS.get(alert.feature, alert.feature)
    if alert.recovered:
        subject = f"[m365-3cx-sync] {label} sync is running again"
        intro = f"The {html.escape(label)} sync succeeded again at {html.escape(alert.last_success or '?')}."
    else:
        subject = f"[m365-3cx-sync] no successful {label} sync for {alert.age_minutes} min"
        since = (f"The last successful run finished at {html.escape(alert.last_success)}"
                 if alert.last_success else "No successful run is recorded at all (the DAGs may be paused, "
                 "never scheduled, or failing since the first run)")
        intro = (f"{since}: {alert.age_minutes} minutes ago, over the limit of {alert.threshold_minutes} minutes "
                 f"(alerts.stale_{html.escape(alert.feature)}_minutes). One alert per episode; another follows "
                 "when it recovers.")
    body = f"<p>{intro}</p><p>DAGs that count: {html.escape(', '.join(alert.dag_ids))}.</p>"
    if alert.base_url:
        links = "".join(f"<li><a href='{html.escape(alert.base_url.rstrip('/'))}/dags/{quote(d)}'>{html.escape(d)}</a>"
                        "</li>" for d in alert.dag_ids)
        body += f"<ul>{links}</ul>"
    if not alert.recovered:
        body += ("<p>Check that the DAGs are unpaused, the scheduler is running and the last runs' logs; "
                 "sync_runs.last_error holds the last failure.</p>")
    return subject, body
