"""What all sync DAGs share: default args, the trigger form (Params), pools, Assets.

Imported at parse time, so it imports nothing heavy and reads no Variable or Connection.
Schedules come from environment variables (cheap, parse-time safe).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetWatcher, Param

from m365_3cx.airflow.alerts import record_task_failure

GRAPH_POOL = "graph_api"
THREECX_POOL = "threecx_api"
TAGS = ["m365-3cx-sync"]

SYNC_TIMEZONE = os.environ.get("M365_3CX_TIMEZONE", "UTC")
FULL_SYNC_CRON = os.environ.get("M365_3CX_FULL_SYNC_CRON", "30 2 * * *")
HOURLY_CRON = os.environ.get("M365_3CX_HOURLY_CRON", "5 * * * *")
DELTA_INTERVAL = timedelta(minutes=max(1, int(os.environ.get("M365_3CX_DELTA_MINUTES", "5"))))
WATCHDOG_INTERVAL = timedelta(minutes=max(1, int(os.environ.get("M365_3CX_WATCHDOG_MINUTES", "10"))))
MAINTENANCE_CRON = os.environ.get("M365_3CX_MAINTENANCE_CRON", "45 3 * * *")
SUBSCRIPTIONS_INTERVAL = timedelta(minutes=max(5, int(os.environ.get("M365_3CX_SUBSCRIPTIONS_MINUTES", "15"))))
#: How often the triggerer polls the push queue (seconds).
PUSH_POLL_SECONDS = max(0.2, float(os.environ.get("M365_3CX_PUSH_POLL_SECONDS", "1")))

STG_USERS = Asset(name="stg_users", uri="m365-3cx-staging://stg_users", group="m365_3cx_staging")
TGT_EXTENSIONS = Asset(name="tgt_extensions", uri="m365-3cx-staging://tgt_extensions", group="m365_3cx_staging")
THREECX_EXTENSIONS = Asset(name="threecx_extensions", uri="m365-3cx-threecx://Users", group="threecx")
STG_CONTACTS = Asset(name="stg_contacts", uri="m365-3cx-staging://stg_contacts", group="m365_3cx_staging")
TGT_PHONEBOOK = Asset(name="tgt_phonebook", uri="m365-3cx-staging://tgt_phonebook", group="m365_3cx_staging")
THREECX_PHONEBOOK = Asset(name="threecx_phonebook", uri="m365-3cx-threecx://Contacts", group="threecx")
STG_EVENTS = Asset(name="stg_events", uri="m365-3cx-staging://stg_events", group="m365_3cx_staging")
STG_AUTO_REPLIES = Asset(name="stg_auto_replies", uri="m365-3cx-staging://stg_auto_replies", group="m365_3cx_staging")
STG_TEAMS_PRESENCE = Asset(name="stg_teams_presence", uri="m365-3cx-staging://stg_teams_presence",
                           group="m365_3cx_staging")
TGT_PRESENCE = Asset(name="tgt_presence", uri="m365-3cx-staging://tgt_presence", group="m365_3cx_staging")
THREECX_PRESENCE = Asset(name="threecx_presence", uri="m365-3cx-threecx://Users/CurrentProfileName", group="threecx")



def _graph_changes() -> Asset:
    from m365_3cx.airflow.push_trigger import PushQueueTrigger

    watcher = AssetWatcher(name="push_queue_watcher", trigger=PushQueueTrigger(poll_seconds=PUSH_POLL_SECONDS))
    return Asset(name="graph_change_notifications", uri="m365-3cx-staging://push_queue", group="m365_3cx_staging",
                 watchers=[watcher])


#: Graph change notifications queued by the receiver; the push DAG's schedule.
GRAPH_CHANGES = _graph_changes()


def default_args(execution_timeout: timedelta = timedelta(minutes=30)) -> dict[str, Any]:
    """Retries with exponential backoff and a timeout on every task."""
    return {
        "owner": "telephony-ops",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": execution_timeout,
        "on_failure_callback": record_task_failure,
    }


def sync_params() -> dict[str, Param]:
    """The manual trigger form shared by the sync DAGs."""
    return {
        "dry_run": Param(
            False, type="boolean", title="Dry run",
            description="Plan only: store and log the change set, write nothing to 3CX.",
        ),
        "full_resync": Param(
            False, type="boolean", title="Full resync",
            description="Ignore stored delta links: extract everything and plan every user.",
        ),
        "only_users": Param(
            [], type="array", items={"type": "string"}, title="Only these users",
            description="Provision on demand: UPNs, Graph ids or extension numbers. The run reads, plans and "
                        "applies just these users (their extension, the phonebook entries their mailbox "
                        "sources, their status) and traces each step in sync_trace. Empty means everyone.",
        ),
        "allow_mass_removal": Param(
            False, type="boolean", title="Allow mass removal",
            description="Let this run disable/delete more extensions than the guard allows.",
        ),
    }
