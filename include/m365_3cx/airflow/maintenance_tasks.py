"""Task bodies of the housekeeping DAGs (``m365_3cx_watchdog``, ``m365_3cx_maintenance``)."""

from __future__ import annotations

import logging
from typing import Any

from m365_3cx.airflow.runtime import fatal_errors_fail_the_task, load_settings, staging_engine, utcnow

log = logging.getLogger(__name__)


def check_staleness() -> dict[str, Any]:
    """Alert (once per episode) when a feature had no successful sync for too long."""
    from m365_3cx.airflow.alerts import alert_base_url, send_email
    from m365_3cx.alerts import build_stale_alert, one_line_reason, scrub
    from m365_3cx.pipeline.maintenance import check_staleness as check

    settings = load_settings()
    alerts = settings.alerts

    def send(alert: Any) -> bool:
        subject, body = build_stale_alert(alert)
        if alerts.channel == "off" or not alerts.to:
            log.warning("staleness alert not e-mailed (alerts are off): %s", subject)
            return True
        try:
            send_email(alerts, subject, body)
        except Exception as exc:  # retried on the next tick
            log.error("staleness alert could not be sent: %s: %s", type(exc).__name__,
                      one_line_reason(scrub(str(exc))))
            return False
        log.info("staleness alert sent to %d recipient(s): %s", len(alerts.to), subject)
        return True

    with fatal_errors_fail_the_task(), staging_engine() as engine:
        return check(engine, settings, utcnow(), send, base_url=alert_base_url(alerts))


def purge_history() -> dict[str, Any]:
    """Delete the staging history older than ``retention.days``."""
    from m365_3cx.pipeline.maintenance import purge_history as purge

    settings = load_settings()
    with fatal_errors_fail_the_task(), staging_engine() as engine:
        return purge(engine, settings, utcnow())
