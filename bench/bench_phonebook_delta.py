"""Benchmark: the phonebook transform + plan of a delta run, incremental against whole-tenant.

No emulators and no HTTP: a PostgreSQL staging database (throwaway, or ``--staging URL``) is filled
with ``--users`` owners of ``--contacts`` contacts each (a fifth of them the same people held by
several owners, so entries de-duplicate across mailboxes), the full run's transform and plan are
run, and the phonebook is taken as applied (``phonebook_map`` = the targets). Then ``--churn`` of
the contacts change (edits that move a contact to another entry, number changes, deletes, new
contacts merging into existing entries) and 0.2 % of the owners change ``usageLocation``, and the
delta run's transform and plan run **incrementally** (what ``m365_3cx_delta`` does now), then
**whole-tenant** on the same state (what it did before). Per step: wall time, SQL statements
(``before_cursor_execute``; an executemany counts once), peak RSS of the process during the step
(``VmRSS`` sampled every 50 ms), and whether both plans are the same change set.

    .venv/bin/python bench/bench_phonebook_delta.py --users 10000 --contacts 25 --churn 0.01

Figures are printed and written (``--json``), never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT / "bench"))

import sqlalchemy as sa  # noqa: E402
from bench_reference import SqlCounter, pg_database  # noqa: E402

from m365_3cx.pipeline import contacts as steps  # noqa: E402
from m365_3cx.reconcile.phonebook import plan_phonebook as whole_plan  # noqa: E402
from m365_3cx.reconcile.plan import plan_rows  # noqa: E402
from m365_3cx.settings import Settings  # noqa: E402
from m365_3cx.staging import contacts as crepo  # noqa: E402
from m365_3cx.staging.bulk import upsert  # noqa: E402
from m365_3cx.staging.db import make_engine  # noqa: E402
from m365_3cx.staging.frames import load_frame  # noqa: E402
from m365_3cx.staging.runs import load_plan  # noqa: E402
from m365_3cx.staging.schema import create_schema, phonebook_map, stg_users, sync_runs, tgt_phonebook  # noqa: E402
from m365_3cx.transform.phonebook import FIELD_COLUMNS, MANAGED_FIELDS, managed_fingerprint  # noqa: E402

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
FIRST = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ida", "Jo", "Kim", "Lu", "Mo", "Ned", "Oz", "Pia"]
REGIONS = ["US", "GB", "DE", "FR", None]


class RssPeak:
    """Peak resident set size of this process while a step runs (``VmRSS`` sampled every 50 ms)."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_kib() -> int:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, self.rss_kib())

    def __enter__(self) -> RssPeak:
        self.peak_kib = self.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.rss_kib())


def measure(name: str, sql: SqlCounter, fn: Callable[[], Any], report: dict[str, Any]) -> Any:
    import gc

    gc.collect()
    before, started = sql.count, time.perf_counter()
    with RssPeak() as rss:
        result = fn()
    entry = {"wall_s": round(time.perf_counter() - started, 2), "sql": sql.count - before,
             "peak_rss_mib": round(rss.peak_kib / 1024, 1)}
    report[name] = entry
    print(f"  {name:<34} {entry['wall_s']:8.2f} s {entry['sql']:7d} SQL {entry['peak_rss_mib']:8.1f} MiB", flush=True)
    return result


def _person(rng: random.Random, pool: list[dict[str, Any]]) -> dict[str, Any]:
    if pool and rng.random() < 0.2:
        return dict(rng.choice(pool))
    return {"givenName": rng.choice(FIRST), "surname": f"S{rng.randrange(10**6):06d}",
            "mobilePhone": f"+1 650 {rng.randrange(200, 999)} {rng.randrange(10**4):04d}",
            "businessPhones": [f"+1 212 555 {rng.randrange(10**4):04d}"] if rng.random() < 0.5 else [],
            "companyName": rng.choice(["Acme", "Zed", None])}


def _graph_item(cid: str, person: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "changeKey": cid, "categories": [], **person}


def _run_row(run_key: str, mode: str, started: datetime, status: str) -> dict[str, Any]:
    return {"run_key": run_key, "dag_id": "m365_3cx_delta" if mode == "delta" else "m365_3cx_full_sync",
            "run_id": run_key, "mode": mode, "dry_run": False, "status": status, "started_at": started}


def _take_as_applied(engine: sa.engine.Engine) -> None:
    with engine.begin() as conn:
        rows = []
        for i, row in enumerate(conn.execute(sa.select(tgt_phonebook)).mappings(), start=1):
            rows.append({"contact_key": row["contact_key"], "tag": row["tag"], "threecx_id": i, "status": "active",
                         "present": True, "current": {f: row[FIELD_COLUMNS[f]] for f in MANAGED_FIELDS},
                         "current_hash": managed_fingerprint({f: row[FIELD_COLUMNS[f]] for f in MANAGED_FIELDS}),
                         "duplicate_ids": [], "created_at": T0, "updated_at": T0})
        upsert(conn, phonebook_map, rows, ["contact_key"])


def _signature(changes: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {(r["action"], r["object_key"], json.dumps(r["changes"], sort_keys=True, default=str)) for r in changes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--contacts", type=int, default=25, help="contacts per owner")
    parser.add_argument("--churn", type=float, default=0.01, help="fraction of contacts changed")
    parser.add_argument("--staging", default=None, help="SQLAlchemy URL (default: a throwaway PostgreSQL database)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "bench_phonebook_delta.json"))
    args = parser.parse_args(argv)
    rng = random.Random(42)
    url, drop = pg_database(args.staging)
    engine = make_engine(url)
    sql = SqlCounter(engine)
    settings = Settings.from_mapping({"contacts": {"personal_contacts": "all"}})
    report: dict[str, Any] = {"tenant": {"users": args.users, "contacts_per_owner": args.contacts,
                                         "churn": args.churn}, "load_before": list(os.getloadavg()), "steps": {}}
    print(f"{args.users} owners x {args.contacts} contacts, churn {args.churn:.1%}; load {os.getloadavg()}",
          flush=True)
    try:
        create_schema(engine)
        owners = [f"{i:08d}-0000-4000-8000-{i:012d}" for i in range(args.users)]
        pool: list[dict[str, Any]] = []
        contacts: dict[str, list[dict[str, Any]]] = {}
        started = time.perf_counter()
        with engine.begin() as conn:
            upsert(conn, stg_users, [
                {"user_id": o, "user_principal_name": f"u{i}@x.example", "usage_location": rng.choice(REGIONS),
                 "in_scope": True, "deleted": False, "first_seen_at": T0, "updated_at": T0, "last_run_key": "r0",
                 "row_hash": o} for i, o in enumerate(owners)], ["user_id"])
            for owner in owners:
                items = []
                for j in range(args.contacts):
                    person = _person(rng, pool)
                    if len(pool) < 5000:
                        pool.append(person)
                    items.append(_graph_item(f"{owner[:8]}-c{j}", person))
                contacts[owner] = items
                crepo.merge_contacts(conn, [crepo.contact_row_from_graph(i, owner, None) for i in items], "r0", T0)
            conn.execute(sync_runs.insert(), [_run_row("r0", "full", T0, "success")])
        print(f"  staged {args.users * args.contacts} contacts in {time.perf_counter() - started:.1f} s", flush=True)
        steps_report = report["steps"]
        print("full run (r0):", flush=True)
        measure("full_transform", sql, lambda: steps.transform_phonebook(engine, settings, "r0", T0, mode="full"),
                steps_report)
        measure("full_plan", sql, lambda: steps.plan_phonebook(engine, "r0", now=T0, mode="full"), steps_report)
        _take_as_applied(engine)

        t1 = T0 + timedelta(minutes=5)
        changed = 0
        with engine.begin() as conn:
            conn.execute(sync_runs.insert(), [_run_row("r1", "delta", t1, "running")])
            total = args.users * args.contacts
            victims = rng.sample(owners, max(1, int(total * args.churn / 3)))
            for owner in victims:
                items = contacts[owner]
                edits = [dict(items[0], surname=f"S{rng.randrange(10**6):06d}"),
                         dict(items[1], mobilePhone=f"+1 650 {rng.randrange(200, 999)} {rng.randrange(10**4):04d}"),
                         _graph_item(f"{owner[:8]}-new", _person(rng, pool))]
                crepo.merge_contacts(conn, [crepo.contact_row_from_graph(i, owner, None) for i in edits], "r1", t1)
                crepo.mark_contacts_deleted(conn, owner, [items[-1]["id"]], "r1", t1)
                changed += 4
            movers = rng.sample(owners, max(1, args.users // 500))
            conn.execute(sa.update(stg_users).where(stg_users.c.user_id.in_(movers)).values(
                usage_location="GB", updated_at=t1, last_run_key="r1"))
        report["changes"] = {"contacts": changed, "owners_relocated": len(movers)}
        print(f"delta run (r1): {changed} contact changes, {len(movers)} owners relocated", flush=True)
        inc = measure("delta_transform_incremental", sql,
                      lambda: steps.transform_phonebook(engine, settings, "r1", t1, mode="delta"), steps_report)
        plan_inc = measure("delta_plan_incremental", sql,
                           lambda: steps.plan_phonebook(engine, "r1", now=t1, mode="delta"), steps_report)
        with engine.connect() as conn:
            inc_plan = _signature(load_plan(conn, steps.contact_plan_key("r1")))

        def whole_diff() -> Any:
            with engine.connect() as conn:
                return whole_plan(load_frame(conn, "tgt_phonebook"), load_frame(conn, "phonebook_map"))

        everything = measure("delta_plan_whole_tenant", sql, whole_diff, steps_report)
        same_plan = inc_plan == _signature(plan_rows(everything.changes, "x"))
        measure("delta_transform_whole_tenant", sql,
                lambda: steps.transform_phonebook(engine, settings, "r1w", t1, mode="full", recompute_all=True),
                steps_report)
        report["incremental"] = {"transform": inc, "plan": plan_inc, "same_plan_as_whole_tenant": same_plan}
        t_inc = steps_report["delta_transform_incremental"]["wall_s"] + steps_report["delta_plan_incremental"]["wall_s"]
        t_all = (steps_report["delta_transform_whole_tenant"]["wall_s"]
                 + steps_report["delta_plan_whole_tenant"]["wall_s"])
        report["speedup"] = round(t_all / max(t_inc, 1e-3), 1)
        print(f"incremental transform+plan {t_inc:.2f} s vs whole tenant {t_all:.2f} s (x{report['speedup']}); "
              f"same plan: {same_plan}; transform {inc}; plan {plan_inc}", flush=True)
        report["load_after"] = list(os.getloadavg())
    finally:
        engine.dispose()
        drop()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
