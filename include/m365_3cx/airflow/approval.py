"""Approval of removals over the mass-removal guard: an Airflow HITL task before each apply step.

``RemovalApprovalOperator`` sits between a feature's plan and apply tasks. When the stored plan's
disables/deletes exceed the guard, it records a pending request in ``sync_approvals``, lists every
removal in the request's body (rendered from ``sync_plan`` at run time; nothing big goes through
XCom) and parks the task in ``awaiting_input`` ("Required actions" in the UI, or
``PATCH .../hitlDetails`` through the REST API). Otherwise it skips itself and the apply step
runs at once (its trigger rule is ``none_failed_min_one_success``).

Approve -> the apply step applies every change. Reject, or no answer within
``guards.approval_timeout_minutes`` (capped by the DAG's run timeout) -> the apply step applies
everything except the removals. Unlike the stock ``ApprovalOperator``, a rejection never skips
the apply step. The decision (who, when, what) is stored in ``sync_approvals`` and ``sync_audit``.
``allow_mass_removal`` stays the scripted override (no request, recorded as ``overridden``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowSkipException

from m365_3cx.airflow.alerts import ApprovalRequestNotifier
from m365_3cx.airflow.runtime import load_settings, park_feature, run_info, staging_engine, utcnow

log = logging.getLogger(__name__)

#: The run-timeout margin kept free so a timed-out request still leaves time to apply the rest.
_APPLY_MARGIN = dt.timedelta(minutes=5)


def _review(engine: Any, settings: Any, run_key: str, object_type: str) -> Any:
    if object_type == "extension":
        from m365_3cx.pipeline.users import review_user_removals

        return review_user_removals(engine, settings, run_key)
    from m365_3cx.pipeline.contacts import review_phonebook_removals

    return review_phonebook_removals(engine, settings, run_key)


def _labels(engine: Any, review: Any) -> dict[str, dict[str, Any]]:
    keys = [row["object_key"] for row in review.removals]
    if review.object_type == "extension":
        from m365_3cx.pipeline.users import removal_labels

        return removal_labels(engine, keys)
    from m365_3cx.pipeline.contacts import phonebook_removal_labels

    return phonebook_removal_labels(engine, keys)


def response_timeout(minutes: int, dagrun_timeout: dt.timedelta | None, started: dt.datetime | None,
                     now: dt.datetime) -> dt.timedelta:
    """The wait for an answer: the setting, but never past the run's own timeout (minus a margin)."""
    wanted = dt.timedelta(minutes=minutes)
    if dagrun_timeout is None or started is None:
        return wanted
    left = started + dagrun_timeout - now - _APPLY_MARGIN
    return max(dt.timedelta(minutes=1), min(wanted, left))


class RemovalApprovalOperator(ApprovalOperator):
    """Ask a human to approve the run's removals of ``object_type`` when they exceed the guard.

    :param object_type: ``extension`` (users) or ``contact`` (company phonebook).
    :param mode: the DAG's mode, for the run identity.
    """

    template_fields = ()  # subject and body are built at run time from staging, never rendered as Jinja
    ui_color = "#fce5cd"

    def __init__(self, *, object_type: str, mode: str, **kwargs: Any) -> None:
        noun = "extension" if object_type == "extension" else "phonebook"
        super().__init__(
            subject=f"Approve {noun} removals over the mass-removal guard",
            defaults="Reject", ignore_downstream_trigger_rules=False, fail_on_reject=False,
            notifiers=[ApprovalRequestNotifier()],
            # placeholder (the task's execution_timeout stays for its own work); the real wait comes
            # from guards.approval_timeout_minutes at run time
            response_timeout=dt.timedelta(minutes=60), **kwargs,
        )
        self.object_type = object_type
        self.mode = mode

    def execute(self, context: Any) -> Any:
        from m365_3cx.pipeline.safety import GUARDED, removal_body, write_gate
        from m365_3cx.staging.control import approval, request_approval

        params = context.get("params") or {}
        run = run_info(context, self.mode)
        settings = load_settings()
        now = utcnow()
        with staging_engine() as engine:
            if write_gate(engine, run.run_key, bool(params.get("dry_run", False)), step=self.task_id).dry_run:
                raise AirflowSkipException("dry run: nothing is removed, so no approval is asked")
            with engine.connect() as conn:
                decided = approval(conn, run.run_key, self.object_type)
            if decided is not None and decided.status != "pending":  # a retry never asks twice
                raise AirflowSkipException(f"already decided: {decided.status} by {decided.decided_by}")
            review = _review(engine, settings, run.run_key, self.object_type)
            noun = GUARDED[self.object_type]
            if not review.tripped:
                raise AirflowSkipException(
                    f"{len(review.removals)} of {review.managed} {noun} removed, within the guard "
                    f"({review.limit}): no approval needed")
            common = {"run_key": run.run_key, "object_type": self.object_type, "plan_key": review.plan_key,
                      "dag_id": run.dag_id, "run_id": run.run_id, "task_id": self.task_id,
                      "removals": len(review.removals), "managed": review.managed,
                      "removal_limit": review.limit, "now": now}
            if params.get("allow_mass_removal"):
                user = getattr(context.get("dag_run"), "triggering_user_name", None)
                with engine.begin() as conn:
                    request_approval(conn, **common, status="overridden",
                                     decided_by=f"allow_mass_removal ({user})" if user else "allow_mass_removal")
                raise AirflowSkipException(
                    f"allow_mass_removal: {len(review.removals)} removals go ahead without approval")
            with engine.begin() as conn:
                request_approval(conn, **common)
            body = removal_body([review], _labels(engine, review), dag_id=run.dag_id, run_id=run.run_id)
            # waiting may take hours: free the feature meanwhile; apply re-validates the plan on resume
            park_feature(engine, self.object_type, run.run_key)
        dag = context.get("dag")
        dag_run = context.get("dag_run")
        self.response_timeout = response_timeout(
            settings.guards.approval_timeout_minutes, getattr(dag, "dagrun_timeout", None),
            getattr(dag_run, "start_date", None), now)
        self.subject = (f"Approve removing {len(review.removals)} of {review.managed} {noun} "
                        f"(guard: {review.limit})")
        self.body = body
        log.warning("%d of %d %s would be removed (guard %d): waiting up to %s for approval",
                    len(review.removals), review.managed, noun, review.limit, self.response_timeout)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Store the answer; never skip the apply step (a rejection applies all but the removals)."""
        from m365_3cx.pipeline.safety import record_decision

        payload = HITLOperator.execute_complete(self, context, event)
        chosen = (payload["chosen_options"] or ["Reject"])[0]
        user = payload.get("responded_by_user") or {}
        name = (user.get("name") or user.get("id")) if isinstance(user, dict) else None
        timed_out = bool(event.get("timedout"))
        run = run_info(context, self.mode)
        with staging_engine() as engine:
            status = record_decision(engine, run.run_key, self.object_type, chosen, responded_by=name,
                                     timed_out=timed_out, now=utcnow())
        return {"decision": status, "by": name}
