"""The load operator: applies a run's stored plan to 3CX."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from m365_3cx.airflow.hooks import StagingHook, ThreeCXHook
from m365_3cx.airflow.runtime import (
    fatal_errors_fail_the_task,
    feature_lease,
    load_settings,
    on_demand_entries,
    release_feature,
    run_info,
    utcnow,
)


class ThreeCXApplyOperator(BaseOperator):
    """Execute the ``sync_plan`` of this DAG run against the 3CX XAPI.

    The write gate runs first (:func:`m365_3cx.pipeline.safety.write_gate`): with the run's
    ``dry_run`` param, or while writes are off (not live), nothing is written to 3CX. Removals
    over the mass-removal guard follow the decision of the upstream approval task; every
    outcome is written to ``sync_audit`` as it happens; only counts go to XCom.

    :param mode: ``full`` or ``delta`` (the run's mode in ``sync_runs``).
    :param threecx_conn_id: ``threecx_xapi`` connection id.
    :param staging_conn_id: staging database connection id.
    """

    template_fields: Sequence[str] = ("mode",)
    ui_color = "#d9ead3"

    def __init__(
        self,
        *,
        mode: str,
        threecx_conn_id: str = ThreeCXHook.default_conn_name,
        staging_conn_id: str = StagingHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mode = mode
        self.threecx_conn_id = threecx_conn_id
        self.staging_conn_id = staging_conn_id

    def execute(self, context: Any) -> dict[str, int]:
        return apply_extensions(context, self.mode, self.threecx_conn_id, self.staging_conn_id)


def apply_extensions(context: Any, mode: str, threecx_conn_id: str = ThreeCXHook.default_conn_name,
                     staging_conn_id: str = StagingHook.default_conn_name) -> dict[str, int]:
    """Apply the run's extensions plan (the body of :class:`ThreeCXApplyOperator`, also used by the push DAG)."""
    from m365_3cx.pipeline.ondemand import trace_results
    from m365_3cx.pipeline.users import apply_users

    params = context.get("params") or {}
    run = run_info(context, mode)
    settings = load_settings()
    engine = StagingHook(staging_conn_id).get_engine()
    client = ThreeCXHook(threecx_conn_id).get_client()
    try:
        with fatal_errors_fail_the_task(), feature_lease(engine, "extensions", run.run_key, "apply", settings):
            counts = apply_users(
                engine, client, settings, run.run_key, utcnow(),
                dry_run=bool(params.get("dry_run", False)),
                allow_mass_removal=bool(params.get("allow_mass_removal", False)),
            )
        release_feature(engine, "extensions", run.run_key, counts)
        return counts
    finally:
        if on_demand_entries(context):  # the trace shows each write's result, also after a failure
            trace_results(engine, run.run_key, run.run_key, "extension", "apply", utcnow())
        client.close()
        engine.dispose()
