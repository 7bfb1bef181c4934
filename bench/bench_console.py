"""Benchmark: every ops-console page and JSON endpoint on a large staging database.

Builds a PostgreSQL staging database with 10,000 users (extensions, desired state, statuses),
5,000 runs over 50 days, 100,000 plan rows, 200,000 audit rows and 50,000 notes (bulk
``INSERT ... SELECT generate_series``; the first full sync alone planned 10,000 creates and wrote
50,000 fields), then times each page exactly as the plugin builds it (queries + Jinja2 HTML) and
each JSON answer (queries + ``json.dumps``), several times, and prints the median and worst
figure per page. Airflow's own login check is not part of the figures.

    .venv/bin/python bench/bench_console.py [--users 10000] [--audit 200000] [--repeat 5] [--json out.json]
        [--admin-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres] [--keep]

Figures are printed, not asserted: machines here are noisy. Target: well under a second per page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from m365_3cx.console import pages
from m365_3cx.console.render import chart, render
from m365_3cx.console.settings_view import Source, describe_settings
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema, metadata

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def build(engine: sa.Engine, users: int, runs: int, plan_rows: int, audit_rows: int, notes: int) -> dict[str, Any]:
    """Fill staging with bulk statements; return a few keys the timed pages ask for."""
    p = {"users": users, "runs": runs, "plan": plan_rows, "audit": audit_rows, "notes": notes,
         "now": NOW, "days": 50}
    big_plan = users  # the first full sync creates every extension
    big_audit = min(audit_rows // 4, users * 5)
    statements = [
        "SELECT setseed(0.42)",
        # users, their extensions, desired state and statuses
        """INSERT INTO stg_users (user_id, user_principal_name, display_name, given_name, surname, mail,
               business_phones, account_enabled, user_type, in_scope, deleted, first_seen_at, updated_at, row_hash)
           SELECT 'u' || lpad(i::text, 6, '0'), 'user' || lpad(i::text, 6, '0') || '@contoso.example',
                  'User ' || i, 'User', 'No ' || i, 'user' || lpad(i::text, 6, '0') || '@contoso.example', '[]',
                  true, 'Member', true, false, :now - interval '50 days', :now, md5(i::text)
           FROM generate_series(1, :users) AS i""",
        """INSERT INTO extension_map (user_id, number, threecx_id, status, assigned_at, adopted)
           SELECT 'u' || lpad(i::text, 6, '0'), (10000 + i)::text, i, 'active', :now - interval '50 days', false
           FROM generate_series(1, :users) AS i""",
        """INSERT INTO tgt_extensions (user_id, number, first_name, last_name, email, enabled, state, computed_at)
           SELECT 'u' || lpad(i::text, 6, '0'), (10000 + i)::text, 'User', 'No ' || i,
                  'user' || lpad(i::text, 6, '0') || '@contoso.example', true, 'active', :now
           FROM generate_series(1, :users) AS i""",
        """INSERT INTO presence_state (user_id, threecx_id, profile, via, set_at)
           SELECT 'u' || lpad(i::text, 6, '0'), i, 'Available', 'set', :now - interval '1 hour'
           FROM generate_series(1, :users) AS i""",
        # runs: one every 50 days / runs, newest last; 2 % failed, 5 % dry
        """INSERT INTO sync_runs (run_key, dag_id, run_id, mode, dry_run, status, started_at, finished_at, counts,
               last_error)
           SELECT d.dag || '/scheduled__' || i, d.dag, 'scheduled__' || i, d.mode, i % 20 = 7,
                  CASE WHEN i % 50 = 3 THEN 'failed' ELSE 'success' END,
                  :now - (:days * interval '1 day') * (1 - i::float / :runs),
                  :now - (:days * interval '1 day') * (1 - i::float / :runs) + interval '40 seconds',
                  '{"extract": {"pages": 3, "updated": 12}, "apply": {"updated": 12, "failed": 0}}',
                  CASE WHEN i % 50 = 3 THEN 'apply_extensions: 3CX answered 503 three times' END
           FROM generate_series(1, :runs) AS i,
                LATERAL (SELECT CASE WHEN i = 1 OR i % 96 = 0 THEN 'm365_3cx_full_sync'
                                     WHEN i % 4 = 0 THEN 'm365_3cx_hourly' ELSE 'm365_3cx_delta' END AS dag,
                                CASE WHEN i = 1 OR i % 96 = 0 OR i % 4 = 0 THEN 'full' ELSE 'delta' END AS mode)
                AS d""",
        # the first full sync: a create per user
        """INSERT INTO sync_plan (run_key, seq, action, object_type, object_key, number, threecx_id, changes, reason,
               status)
           SELECT 'm365_3cx_full_sync/scheduled__1', i, 'create', 'extension', 'u' || lpad(i::text, 6, '0'),
                  (10000 + i)::text, NULL,
                  json_build_object('FirstName', json_build_array(NULL, 'User'),
                                    'LastName', json_build_array(NULL, 'No ' || i),
                                    'EmailAddress', json_build_array(NULL, 'user' || i || '@contoso.example')),
                  'new user', 'applied'
           FROM generate_series(1, :big_plan) AS i""",
        # every later run: updates, phonebook changes and status switches spread over the runs
        """INSERT INTO sync_plan (run_key, seq, action, object_type, object_key, number, threecx_id, changes, reason,
               status)
           SELECT r.run_key || s.suffix, (i / :runs) + 1, s.action, s.kind,
                  CASE WHEN s.kind = 'contact' THEN md5(i::text) ELSE 'u' || lpad((1 + i % :users)::text, 6, '0') END,
                  CASE WHEN s.kind = 'contact' THEN NULL ELSE (10001 + i % :users)::text END, 1 + i % :users,
                  json_build_object(s.field, json_build_array('old ' || i, 'new ' || i)), 'fields changed',
                  CASE WHEN r.dry_run THEN 'dry_run' WHEN r.status = 'failed' THEN 'failed' ELSE 'applied' END
           FROM generate_series(0, :plan - :big_plan - 1) AS i
           JOIN (SELECT *, row_number() OVER (ORDER BY started_at) AS n FROM sync_runs) AS r
             ON r.n = 2 + i % (:runs - 1)
           CROSS JOIN LATERAL (SELECT CASE i % 3 WHEN 0 THEN '' WHEN 1 THEN '#contacts' ELSE '#presence' END AS suffix,
                                      CASE i % 3 WHEN 0 THEN 'update' WHEN 1 THEN 'update' ELSE 'set_profile' END
                                          AS action,
                                      CASE i % 3 WHEN 0 THEN 'extension' WHEN 1 THEN 'contact' ELSE 'presence' END
                                          AS kind,
                                      CASE i % 3 WHEN 0 THEN 'Mobile' WHEN 1 THEN 'PhoneNumber'
                                          ELSE 'CurrentProfileName' END AS field) AS s""",
        # audit: the first full sync's fields, then the rest over all runs
        """INSERT INTO sync_audit (run_key, at, action, object_type, object_key, number, threecx_id, field, before,
               after, result, error)
           SELECT 'm365_3cx_full_sync/scheduled__1', :now - interval '50 days', 'create', 'extension',
                  'u' || lpad((1 + i / 5)::text, 6, '0'), (10001 + i / 5)::text, 1 + i / 5,
                  (ARRAY['FirstName', 'LastName', 'EmailAddress', 'Mobile', 'Enabled'])[1 + i % 5], NULL,
                  'value ' || i, 'ok', NULL
           FROM generate_series(0, :big_audit - 1) AS i""",
        """INSERT INTO sync_audit (run_key, at, action, object_type, object_key, number, threecx_id, field, before,
               after, result, error)
           SELECT r.run_key, r.started_at + interval '20 seconds',
                  CASE WHEN i % 2 = 0 THEN 'update' ELSE 'set_profile' END,
                  CASE WHEN i % 2 = 0 THEN 'extension' ELSE 'presence' END,
                  'u' || lpad((1 + i % :users)::text, 6, '0'), (10001 + i % :users)::text, 1 + i % :users,
                  CASE WHEN i % 2 = 0 THEN 'Mobile' ELSE 'CurrentProfileName' END, 'old ' || i, 'new ' || i,
                  CASE WHEN i % 97 = 0 THEN 'failed' ELSE 'ok' END,
                  CASE WHEN i % 97 = 0 THEN '3CX answered 400: Mobile: invalid' END
           FROM generate_series(0, :audit - :big_audit - 1) AS i
           JOIN (SELECT run_key, started_at, row_number() OVER (ORDER BY started_at) AS n FROM sync_runs
                 WHERE NOT dry_run) AS r ON r.n = 2 + i % (:runs - 300)""",
        """INSERT INTO sync_notes (run_key, step, at, object_type, object_key, record_label, field, severity, message)
           SELECT r.run_key, 'transform', r.started_at, CASE WHEN i % 3 = 0 THEN 'user' ELSE 'contact' END,
                  CASE WHEN i % 3 = 0 THEN 'u' || lpad((1 + i % :users)::text, 6, '0')
                       ELSE 'u' || lpad((1 + i % :users)::text, 6, '0') || '/c' || i END,
                  'user' || lpad((1 + i % :users)::text, 6, '0') || '@contoso.example',
                  CASE WHEN i % 3 = 0 THEN 'mobilePhone' ELSE 'mobilePhone/businessPhones/homePhones' END,
                  (ARRAY['info', 'info', 'warning', 'error'])[1 + i % 4],
                  'note ' || i || ': has no phone number; no dialable number, contact skipped'
           FROM generate_series(0, :notes - 1) AS i
           JOIN (SELECT run_key, started_at, row_number() OVER (ORDER BY started_at DESC) AS n FROM sync_runs)
             AS r ON r.n = 1 + i % 200""",
    ]
    if "sync_trace" in metadata.tables:
        statements.append(
            """INSERT INTO sync_trace (run_key, user_id, upn, step, seq, outcome, detail, at)
               SELECT 'm365_3cx_delta/scheduled__' || (2 + i % 50), 'u' || lpad((1 + i % :users)::text, 6, '0'),
                      'user' || lpad((1 + i % :users)::text, 6, '0') || '@contoso.example',
                      (ARRAY['read', 'scope', 'match', 'plan', 'apply'])[1 + i % 5], 1 + i % 5, 'ok',
                      '{"reason": "in scope"}', :now - interval '1 day'
               FROM generate_series(0, 19999) AS i""")
    if "sync_approvals" in metadata.tables:
        statements.append(
            """INSERT INTO sync_approvals (run_key, object_type, plan_key, dag_id, run_id, task_id, removals, managed,
                   removal_limit, status, requested_at)
               SELECT run_key, 'extension', run_key, dag_id, run_id, 'approve_removals', 120, :users, 1000,
                      CASE WHEN started_at > :now - interval '1 day' THEN 'pending' ELSE 'rejected' END, started_at
               FROM sync_runs WHERE dag_id = 'm365_3cx_full_sync'""")
    params = {**p, "big_plan": big_plan, "big_audit": big_audit}
    for sql in statements:
        started = time.perf_counter()
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
        first = " ".join(sql.split()[:3])
        print(f"  {first:<32} {max(result.rowcount, 0):>9,} rows  {time.perf_counter() - started:6.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("stg_users", "sync_runs", "sync_plan", "sync_audit", "sync_notes")}
        latest_full = conn.execute(sa.text(
            "SELECT run_key FROM sync_runs WHERE dag_id = 'm365_3cx_full_sync' ORDER BY started_at DESC LIMIT 1"
        )).scalar_one()
    return {"counts": counts, "big_run": "m365_3cx_full_sync/scheduled__1", "latest_full": latest_full}


def cases(keys: dict[str, Any], users: int) -> list[tuple[str, str, dict[str, str]]]:
    middle = f"{users // 2:06d}"
    return [
        ("overview", "", {}),
        ("runs, page 1", "runs", {}),
        ("runs, page 80 (deep)", "runs", {"page": "80"}),
        ("runs, failed only", "runs", {"status": "failed"}),
        ("run: 10,000-change set", "run", {"key": keys["big_run"]}),
        ("run: change set page 150", "run", {"key": keys["big_run"], "page": "150"}),
        ("run: change set by UPN", "run", {"key": keys["big_run"], "q": f"user{middle}@contoso.example"}),
        ("run: writes (audit)", "run", {"key": keys["big_run"], "tab": "writes"}),
        ("run: writes page 900", "run", {"key": keys["big_run"], "tab": "writes", "page": "900"}),
        ("run: latest full", "run", {"key": keys["latest_full"]}),
        ("pending plan", "plan", {}),
        ("user by extension", "users", {"q": str(10000 + users // 2)}),
        ("user by UPN", "users", {"q": f"USER{middle}@contoso.example"}),
        ("user search (substring)", "users", {"q": f"user{middle[:-1]}"}),
        ("notes, latest runs", "notes", {}),
        ("notes, errors", "notes", {"severity": "error"}),
        ("notes, text search", "notes", {"q": "no phone", "kind": "contact"}),
        ("approvals", "approvals", {}),
    ]


def time_pages(engine: sa.Engine, keys: dict[str, Any], users: int, repeat: int) -> list[dict[str, Any]]:
    ctx = pages.Context(now=NOW, stale_minutes={"users": 90, "phonebook": 90, "statuses": 180}, chart_cache={})
    results = []
    # The plugin's first request of each page compiles its template and counts the complete days of the
    # chart once per process (the API server keeps both): time that apart, then the steady state.
    started = time.perf_counter()
    for _, path, params in cases(keys, users):
        with engine.connect() as conn:
            data = pages.build(path, conn, params, ctx, html=True)
        if "days" in data:
            data["chart_data"] = chart(data["days"])
        template, title, _ = pages.PAGES[path]
        render(f"{template}.html", title=title, nav=template, base="/m365-3cx", ui="", params=params,
               refresh_seconds=60, **data)
    print(f"first request of every page (template compile, chart history): {time.perf_counter() - started:.2f} s")
    print(f"\n{'page':<30} {'HTML median':>12} {'HTML max':>9} {'JSON median':>12} {'bytes':>9}")
    for label, path, params in cases(keys, users):
        html_times, json_times, size = [], [], 0
        for _ in range(repeat):
            started = time.perf_counter()
            with engine.connect() as conn:
                data = pages.build(path, conn, params, ctx, html=True)
            if "days" in data:
                data["chart_data"] = chart(data["days"])
            template, title, _ = pages.PAGES[path]
            text = render(f"{template}.html", title=title, nav=template, base="/m365-3cx", ui="", params=params,
                          refresh_seconds=60, **data)
            html_times.append(time.perf_counter() - started)
            size = len(text.encode())
            started = time.perf_counter()
            with engine.connect() as conn:
                json.dumps(pages.build(path, conn, params, ctx))
            json_times.append(time.perf_counter() - started)
        row = {"page": label, "path": f"/{path}", "params": params,
               "html_median_ms": statistics.median(html_times) * 1000,
               "html_max_ms": max(html_times) * 1000, "json_median_ms": statistics.median(json_times) * 1000,
               "html_bytes": size}
        results.append(row)
        print(f"{label:<30} {row['html_median_ms']:>9.0f} ms {row['html_max_ms']:>6.0f} ms "
              f"{row['json_median_ms']:>9.0f} ms {size:>9,}")
    started = time.perf_counter()
    for _ in range(repeat):
        describe_settings([Source("EnvironmentVariablesBackend", json.dumps({"numbering": {"policy": "pool"}})),
                           Source("MetastoreBackend", "{}")])
    print(f"{'settings (describe only)':<30} {(time.perf_counter() - started) / repeat * 1000:>9.1f} ms")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument("--plan", type=int, default=100_000)
    parser.add_argument("--audit", type=int, default=200_000)
    parser.add_argument("--notes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = parser.parse_args()

    name = f"m365_3cx_bench_console_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(sa.make_url(args.admin_url).set(database=name))
    try:
        create_schema(engine)
        print(f"building {name}: {args.users:,} users, {args.runs:,} runs, {args.plan:,} plan rows, "
              f"{args.audit:,} audit rows, {args.notes:,} notes")
        started = time.perf_counter()
        keys = build(engine, args.users, args.runs, args.plan, args.audit, args.notes)
        print(f"  built in {time.perf_counter() - started:.1f} s: {keys['counts']}")
        results = time_pages(engine, keys, args.users, args.repeat)
        worst = max(r["html_max_ms"] for r in results)
        print(f"\nslowest page (worst of {args.repeat}): {worst:.0f} ms")
        if args.json:
            args.json.write_text(json.dumps({"database": keys["counts"], "repeat": args.repeat, "pages": results},
                                            indent=2))
    finally:
        engine.dispose()
        if args.keep:
            print(f"kept database {name}")
        else:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
