"""The sync's health at a glance, read from the staging database (no Airflow, no 3CX calls).

Feeds the sync-status page of the Airflow plugin and anything else that wants a summary:
the latest run of each DAG (status, counts, last error), what the sync manages now, and the
per-record notes of the latest runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from m365_3cx.staging.schema import extension_map, phonebook_map, presence_state, sync_notes, sync_runs

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sync_status(engine: Engine, *, runs_per_dag: int = 5) -> dict[str, Any]:
    """Summary of the sync for people: recent runs per DAG, managed object counts, note counts.

    :param engine: the staging database.
    :param runs_per_dag: how many recent runs to list for each DAG.
    """
    with engine.connect() as conn:
        query = sa.select(sync_runs.c.dag_id).distinct().order_by(sync_runs.c.dag_id)
        dag_ids = [row[0] for row in conn.execute(query)]
        dags: dict[str, list[dict[str, Any]]] = {}
        for dag_id in dag_ids:
            rows = conn.execute(
                sa.select(sync_runs).where(sync_runs.c.dag_id == dag_id)
                .order_by(sync_runs.c.started_at.desc()).limit(runs_per_dag)
            ).mappings().all()
            dags[dag_id] = [
                {
                    "run_id": r["run_id"], "mode": r["mode"], "dry_run": bool(r["dry_run"]), "status": r["status"],
                    "started_at": _iso(r["started_at"]), "finished_at": _iso(r["finished_at"]),
                    "counts": r["counts"] or {}, "last_error": r["last_error"],
                }
                for r in rows
            ]
        managed_extensions = conn.execute(
            sa.select(sa.func.count()).select_from(extension_map)
            .where(extension_map.c.status == "active", extension_map.c.threecx_id.is_not(None))
        ).scalar_one()
        released_numbers = conn.execute(
            sa.select(sa.func.count()).select_from(extension_map).where(extension_map.c.status == "released")
        ).scalar_one()
        phonebook_entries = conn.execute(
            sa.select(sa.func.count()).select_from(phonebook_map).where(phonebook_map.c.threecx_id.is_not(None))
        ).scalar_one()
        presence_users = conn.execute(sa.select(sa.func.count()).select_from(presence_state)).scalar_one()
        latest = [runs[0]["run_id"] for runs in dags.values() if runs]
        latest_keys = [f"{dag_id}/{runs[0]['run_id']}" for dag_id, runs in dags.items() if runs]
        notes = {
            severity: count
            for severity, count in conn.execute(
                sa.select(sync_notes.c.severity, sa.func.count())
                .where(sync_notes.c.run_key.in_(latest_keys)).group_by(sync_notes.c.severity)
            )
        } if latest else {}
    return {
        "dags": dags,
        "managed": {"extensions": managed_extensions, "released_numbers": released_numbers,
                    "phonebook_entries": phonebook_entries, "presence_users": presence_users},
        "latest_run_notes": notes,
    }
