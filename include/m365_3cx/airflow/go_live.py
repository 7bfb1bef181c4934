"""Task body of the ``m365_3cx_go_live`` DAG: turn writes to 3CX on or off, audited.

The only way the go-live switch changes. The Airflow user who triggered the run is recorded
(``dag_run.triggering_user_name``) with the time and the note; turning writes on needs the typed
confirmation :data:`CONFIRMATION`.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from m365_3cx.airflow.runtime import staging_engine, utcnow

log = logging.getLogger(__name__)

#: What the operator types in the ``confirm`` field to turn writes on.
CONFIRMATION: Final = "ENABLE WRITES"


def set_go_live() -> dict[str, Any]:
    """Apply the run's ``writes_enabled`` param to the go-live switch and log who did it.

    :raises AirflowFailException: writes asked on without the confirmation, or no triggering user.
    """
    from m365_3cx.staging.control import set_writes_enabled, writes_enabled

    context = get_current_context()
    params = context.get("params") or {}
    dag_run = context["dag_run"]
    wanted = bool(params.get("writes_enabled", False))
    user = (getattr(dag_run, "triggering_user_name", None) or "").strip()
    if not user:
        raise AirflowFailException("the go-live switch is changed only by a run a named user triggered")
    if wanted and str(params.get("confirm") or "").strip() != CONFIRMATION:
        raise AirflowFailException(f"to turn writes on, type {CONFIRMATION!r} in the confirm field")
    note = str(params.get("note") or "").strip()[:500] or None
    run_key = f"{dag_run.dag_id}/{dag_run.run_id}"[:250]
    with staging_engine() as engine, engine.begin() as conn:
        before = writes_enabled(conn)
        state = set_writes_enabled(conn, wanted, changed_by=user, now=utcnow(), run_key=run_key, note=note)
    log.warning("go-live switch: writes to 3CX %s -> %s by %s", "on" if before.enabled else "off",
                "ON (live)" if state.enabled else "OFF (not live: every run is a dry run)", user)
    return {"writes_enabled": state.enabled, "previous": before.enabled, "changed_by": user,
            "changed_at": state.changed_at.isoformat() if state.changed_at else None}
