from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import Engine, inspect, select, text

from m365_3cx.errors import ConfigError
from m365_3cx.staging.schema import SCHEMA_VERSION, create_schema, metadata, schema_version

CONTRACT_TABLES = {
    "stg_users": {
        "user_id",
        "user_principal_name",
        "display_name",
        "given_name",
        "surname",
        "mail",
        "mobile_phone",
        "business_phones",
        "account_enabled",
        "user_type",
        "usage_location",
        "department",
        "job_title",
        "extension_attributes",
        "in_scope",
        "deleted",
        "deleted_at",
        "first_seen_at",
        "updated_at",
        "last_run_key",
        "row_hash",
        "scope_miss",
        "protected_group",
    },
    "delta_state": {"resource", "delta_link", "updated_at", "run_key"},
    "extension_map": {"user_id", "number", "threecx_id", "status", "assigned_at", "released_at", "adopted",
                      "removal_since"},
    "cur_extensions": {
        "threecx_id",
        "number",
        "first_name",
        "last_name",
        "display_name",
        "email",
        "mobile",
        "outbound_caller_id",
        "enabled",
        "current_profile",
        "tags",
        "run_key",
        "read_at",
    },
    "tgt_extensions": {
        "user_id",
        "number",
        "first_name",
        "last_name",
        "email",
        "mobile",
        "outbound_caller_id",
        "enabled",
        "state",
        "removal_reason",
        "run_key",
        "computed_at",
        "protection",
    },
    "sync_runs": {"run_key", "dag_id", "run_id", "mode", "dry_run", "status", "started_at", "finished_at", "counts",
                  "last_error", "dry_reason"},
    "sync_plan": {
        "run_key",
        "seq",
        "action",
        "object_type",
        "object_key",
        "number",
        "threecx_id",
        "changes",
        "reason",
        "status",
    },
    "sync_audit": {
        "id",
        "run_key",
        "at",
        "action",
        "object_type",
        "object_key",
        "number",
        "threecx_id",
        "field",
        "before",
        "after",
        "result",
        "error",
    },
    "sync_notes": {
        "id",
        "run_key",
        "step",
        "at",
        "object_type",
        "object_key",
        "record_label",
        "field",
        "severity",
        "message",
    },
    "sync_trace": {"id", "run_key", "user_id", "upn", "step", "seq", "outcome", "detail", "at"},
}
LATER_TABLES = {
    "sync_alert_state",
    "stg_contacts",
    "stg_events",
    "stg_auto_replies",
    "stg_teams_presence",
    "phonebook_map",
    "presence_state",
    "tgt_phonebook",
    "tgt_phonebook_sources",
    "transform_state",
    "push_queue",
    "push_rejections",
    "push_subscriptions",
    "tgt_presence",
    "presence_inputs",
    "schema_version",
    "sync_control",
    "sync_control_log",
    "sync_approvals",
    "feature_lease",
    "feature_claim",
}


def test_create_schema_is_idempotent(empty_engine: Engine) -> None:
    assert create_schema(empty_engine) == SCHEMA_VERSION
    assert create_schema(empty_engine) == SCHEMA_VERSION
    insp = inspect(empty_engine)
    names = set(insp.get_table_names())
    assert set(CONTRACT_TABLES) | LATER_TABLES <= names
    for name, columns in CONTRACT_TABLES.items():
        assert {c["name"] for c in insp.get_columns(name)} == columns, name
    with empty_engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [SCHEMA_VERSION]
    uniques = insp.get_unique_constraints("extension_map") + [
        i for i in insp.get_indexes("extension_map") if i["unique"]
    ]
    assert any(u["column_names"] == ["number"] for u in uniques)
    assert any(i["column_names"] == ["run_key"] for i in insp.get_indexes("sync_audit"))
    assert any(i["column_names"][0] == "run_key" for i in insp.get_indexes("sync_notes"))


def test_newer_schema_is_refused(engine: Engine) -> None:
    import datetime as dt

    with engine.begin() as conn:
        conn.execute(schema_version.insert(), {"version": SCHEMA_VERSION + 1, "applied_at": dt.datetime.now(dt.UTC)})
    with pytest.raises(ConfigError, match="newer"):
        create_schema(engine)


def test_metadata_declares_every_table() -> None:
    assert set(CONTRACT_TABLES) | LATER_TABLES == set(metadata.tables)


def test_create_schema_adds_a_missing_index_to_an_existing_table(empty_engine: Engine) -> None:
    """The upgrade path: an index added to a table that already exists is created by the next run."""
    create_schema(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_sync_trace_upn"))
    assert "ix_sync_trace_upn" not in {i["name"] for i in inspect(empty_engine).get_indexes("sync_trace")}
    create_schema(empty_engine)
    assert "ix_sync_trace_upn" in {i["name"] for i in inspect(empty_engine).get_indexes("sync_trace")}


_RACE = """
import sys
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema
create_schema(make_engine(sys.argv[1]))
"""


def test_concurrent_create_schema(empty_engine: Engine) -> None:
    url = empty_engine.url.render_as_string(hide_password=False)
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, url], stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with empty_engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [SCHEMA_VERSION]


def _index_names(engine: Engine) -> set[str]:
    """Index names as the database lists them (the inspector leaves out expression indexes on SQLite)."""
    query = ("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
             if engine.dialect.name == "postgresql" else "SELECT name FROM sqlite_master WHERE type = 'index'")
    with engine.connect() as conn:
        return {row[0] for row in conn.exec_driver_sql(query)}


def test_an_older_database_gets_the_console_indexes(empty_engine: Engine) -> None:
    """Tables created before the console's indexes existed get them on the next create_schema."""
    create_schema(empty_engine)
    added = {"ix_sync_plan_object_key", "ix_sync_audit_at_result", "ix_sync_audit_run_key_id",
             "ix_sync_notes_object_key", "ix_sync_runs_started",
             "ix_sync_notes_record_label", "ix_sync_notes_run_key_severity"}
    assert added <= _index_names(empty_engine)
    with empty_engine.begin() as conn:
        for name in sorted(added):
            conn.exec_driver_sql(f"DROP INDEX {name}")
    assert create_schema(empty_engine) == SCHEMA_VERSION
    assert added <= _index_names(empty_engine)


def test_upgrade_adds_the_columns_a_newer_version_added(empty_engine: Engine) -> None:
    """A version-1 database (``sync_runs`` without ``dry_reason``) gets the column, its rows kept."""
    import datetime as dt

    from sqlalchemy import text

    with empty_engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE sync_runs (run_key VARCHAR(250) PRIMARY KEY, dag_id VARCHAR(250) NOT NULL, "
            "run_id VARCHAR(250) NOT NULL, mode VARCHAR(16) NOT NULL, dry_run BOOLEAN NOT NULL, "
            "status VARCHAR(16) NOT NULL, started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, "
            "counts JSON, last_error TEXT)"))
        conn.execute(text("INSERT INTO sync_runs (run_key, dag_id, run_id, mode, dry_run, status, started_at) "
                          "VALUES ('d/r', 'd', 'r', 'full', false, 'success', '2026-01-01 00:00:00')"))
        conn.execute(text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"))
        conn.execute(schema_version.insert(), {"version": 1, "applied_at": dt.datetime.now(dt.UTC)})
    assert create_schema(empty_engine) == SCHEMA_VERSION
    assert create_schema(empty_engine) == SCHEMA_VERSION
    columns = {c["name"] for c in inspect(empty_engine).get_columns("sync_runs")}
    assert columns == CONTRACT_TABLES["sync_runs"]
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT run_key, dry_reason FROM sync_runs")).all() == [("d/r", None)]
        assert conn.execute(select(schema_version.c.version).order_by(schema_version.c.version)).scalars().all() \
            == [1, SCHEMA_VERSION]


def test_upgrade_to_version_3_adds_the_phonebook_fingerprints(empty_engine: Engine) -> None:
    """A version-2 database gets ``tgt_phonebook.fields_hash`` and ``phonebook_map.current_hash`` (NULL in
    its rows: the plan then diffs those entries, the next snapshot and transform fill them in)."""
    import datetime as dt

    create_schema(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("ALTER TABLE tgt_phonebook DROP COLUMN fields_hash"))
        conn.execute(text("ALTER TABLE phonebook_map DROP COLUMN current_hash"))
        conn.execute(text("INSERT INTO phonebook_map (contact_key, tag, status, present, created_at, updated_at) "
                          "VALUES ('k', 'm365-sync:k', 'active', false, '2026-01-01 00:00:00', "
                          "'2026-01-01 00:00:00')"))
        conn.execute(schema_version.delete())
        conn.execute(schema_version.insert(), {"version": 2, "applied_at": dt.datetime.now(dt.UTC)})
    assert create_schema(empty_engine) == SCHEMA_VERSION == 3
    assert "fields_hash" in {c["name"] for c in inspect(empty_engine).get_columns("tgt_phonebook")}
    assert "current_hash" in {c["name"] for c in inspect(empty_engine).get_columns("phonebook_map")}
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT contact_key, current_hash FROM phonebook_map")).all() == [("k", None)]
        assert conn.execute(select(schema_version.c.version).order_by(schema_version.c.version)).scalars().all() \
            == [2, 3]
