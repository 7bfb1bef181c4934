"""Benchmark: the users -> extensions pipeline end to end against the emulators.

Runs the same steps the DAG tasks run (extract, 3CX snapshot, transform, plan, apply),
without Airflow's task overhead, for a tenant of N users, then a second full pass
(which must write nothing) and a delta pass after a few changes. Prints wall time per
step, requests sent to each emulator and the process's peak RSS.

    .venv/bin/python bench/bench_sync.py --users 2000 [--staging postgresql+psycopg2://postgres@127.0.0.1/test]

Figures are printed, not asserted: machines here are noisy.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulators import graph as graph_emulator
from emulators import threecx as threecx_emulator
from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.pipeline import users as pipeline
from m365_3cx.settings import Settings
from m365_3cx.staging.control import set_writes_enabled
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"  {label:<22} {time.perf_counter() - started:7.2f} s   {result}")
    return result


def one_pass(name: str, engine, graph, threecx, settings, mode: str) -> None:
    run = pipeline.RunInfo.create("bench", f"{name}-{time.time_ns()}", mode)
    now = datetime.now(UTC)
    print(f"{name} ({mode}):")
    started = time.perf_counter()
    pipeline.start_run(engine, run, now)
    timed("extract users", pipeline.extract_users, engine, graph, settings, run.run_key, mode, now)
    timed("snapshot 3CX", pipeline.snapshot_threecx, engine, threecx, run.run_key, now)
    timed("transform", pipeline.transform_users, engine, settings, run.run_key, now)
    only = pipeline.pending_user_keys(engine, run.run_key) if mode == "delta" else None
    timed("plan", pipeline.plan_users, engine, settings, run.run_key, only, now)
    counts = timed("apply", pipeline.apply_users, engine, threecx, settings, run.run_key, now,
                   dry_run=False, allow_mass_removal=True)
    pipeline.finish_run(engine, run.run_key, "success", counts, datetime.now(UTC))
    print(f"  {'total':<22} {time.perf_counter() - started:7.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--staging", default=None, help="SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    graph_handle = graph_emulator.start(tmp / "tls", seed=42, users=args.users)
    pbx_handle = threecx_emulator.start(tmp / "tls", seed=7)
    g, p = graph_handle.info, pbx_handle.info
    graph = GraphClient(GraphCredentials(
        tenant_id=g["tenant_id"], client_id=g["client_id"], client_secret=g["client_secret"],
        authority_host=g["authority"].rsplit("/", 1)[0], graph_url=g["graph_url"], ca_bundle=g["ca_bundle"],
    ))
    threecx = ThreeCXClient(ThreeCXCredentials(p["base_url"], p["client_id"], p["client_secret"], p["ca_bundle"]))
    engine = make_engine(args.staging or f"sqlite:///{tmp / 'staging.db'}")
    create_schema(engine)
    with engine.begin() as conn:  # a fresh install is not live: go live, as the go-live DAG would
        set_writes_enabled(conn, True, changed_by="bench_sync.py", now=datetime.now(UTC), note="benchmark")
    settings = Settings.from_mapping({
        "numbering": {"policy": "attribute", "fallback_to_pool": True, "pool_first": "10000", "pool_last": "19999"},
    })
    print(f"tenant: {args.users} users; staging: {engine.url.get_backend_name()}; python {sys.version.split()[0]}")
    try:
        one_pass("first full sync", engine, graph, threecx, settings, "full")
        one_pass("second full sync", engine, graph, threecx, settings, "full")
        users = graph_handle.admin("GET", "state").json()["users"][:10]
        for user in users:
            graph_handle.admin("PATCH", f"users/{user['id']}", json={"jobTitle": "Benchmarked"})
            graph_handle.admin("PATCH", f"users/{user['id']}", json={"surname": user["surname"] + "-x"})
        one_pass("delta after 10 renames", engine, graph, threecx, settings, "delta")
        print(f"requests: graph {graph_handle.admin('GET', 'counters').json()['total']}, "
              f"3cx {pbx_handle.admin('GET', 'counters').json()['total']}")
        print(f"peak RSS of this process (includes both emulators): {peak_rss_mib():.0f} MiB")
    finally:
        graph.close()
        threecx.close()
        engine.dispose()
        graph_handle.stop()
        pbx_handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
