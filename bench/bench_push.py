"""Change-to-3CX latency: Graph change notifications (push) vs the 1-minute timed delta.

Starts ``scripts/push_cluster.py`` (LocalExecutor scheduler, triggerer, dag-processor, HTTPS
api-server with the receiver, both emulators), provisions the tenant (full sync and the
subscriptions DAG, triggered through the REST API), then measures two phases on the same cluster:

* **push**: only ``m365_3cx_push`` unpaused — the Graph emulator notifies the receiver, the
  AssetWatcher fires, the push DAG carries the change;
* **timed**: ``m365_3cx_push`` paused, ``m365_3cx_delta`` unpaused every minute
  (``M365_3CX_DELTA_MINUTES=1``) — the change waits for the next delta run.

Each phase makes ``--changes`` changes of each kind — a rename (surname), a new Outlook contact, a
meeting now (phase 1 adds it: Available -> Away; phase 2 deletes it: Away -> Available) — one
every ``--interval`` seconds, kinds interleaved, and polls the 3CX emulator until each is visible.
Prints p50/p95/max per kind and phase and writes them as JSON (``--json``). Nothing is asserted.

    .venv/bin/python bench/bench_push.py --changes 20 --interval 2 --json bench/results/push.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 50},
    "presence": {"enabled": True, "mode": "respect", "shard_size": 50},
}


def _launcher() -> Any:
    spec = importlib.util.spec_from_file_location("m365_3cx_push_cluster", ROOT / "scripts" / "push_cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), 2), "p95": round(percentile(values, 95), 2),
            "max": round(max(values), 2), "mean": round(statistics.fmean(values), 2)}


class Bench:
    def __init__(self, cluster: Any, users: list[dict[str, Any]]) -> None:
        self.cluster = cluster
        self.users = users

    def pbx(self) -> dict[str, Any]:
        return self.cluster.threecx_admin("GET", "state")

    def run_rest(self, dag_id: str) -> None:
        cluster = self.cluster
        cluster._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        run_id = cluster.trigger(dag_id)
        state = cluster.wait(dag_id, run_id, timeout=900)
        cluster._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})
        if state != "success":
            raise RuntimeError(f"{dag_id} {run_id} ended {state}\n{cluster.logs_report()}")

    def meeting(self, user: dict[str, Any]) -> str:
        now = dt.datetime.now(dt.UTC)
        fmt = "%Y-%m-%dT%H:%M:%S"
        body = {"subject": "bench", "showAs": "busy",
                "start": {"dateTime": (now - dt.timedelta(minutes=5)).strftime(fmt), "timeZone": "UTC"},
                "end": {"dateTime": (now + dt.timedelta(hours=3)).strftime(fmt), "timeZone": "UTC"}}
        return str(self.cluster.graph_admin("POST", f"users/{user['id']}/events", json=body)["id"])

    def phase(self, name: str, changes: int, interval: float, timeout: float,
              meetings: dict[str, str]) -> dict[str, list[float]]:
        """Make the changes, one every ``interval`` s; return seconds from each change to its sight in 3CX."""
        graph = self.cluster.graph_admin
        pending: list[tuple[str, float, Any]] = []  # (kind, made at, probe(state) -> bool)
        results: dict[str, list[float]] = {}
        self.changes: list[dict[str, Any]] = []  # per change: queue kind, user, wall-clock made/seen
        for i in range(changes):
            user = self.users[i % len(self.users)]
            owner = self.users[(i + 7) % len(self.users)]
            surname, first = f"Bench{name.title()}{i}", f"Bench{name.title()}{i}"
            mail = user["mail"].lower()
            graph("PATCH", f"users/{user['id']}", json={"surname": surname})
            pending.append(("rename", self._made("users", user["id"]), lambda s, m=mail, n=surname: any(
                u.get("EmailAddress") == m and u.get("LastName") == n for u in s["users"])))
            self._pause(interval, pending, results)
            graph("POST", f"users/{owner['id']}/contacts", json={"givenName": first, "surname": "Bench",
                                                                  "mobilePhone": f"+49 170 55{i:05d}"})
            pending.append(("contact", self._made("contacts", owner["id"]), lambda s, f=first: any(
                c.get("FirstName") == f for c in s["contacts"])))
            self._pause(interval, pending, results)
            if name == "push":
                meetings[user["id"]] = self.meeting(user)
                wanted = "Away"
            else:
                graph("DELETE", f"users/{user['id']}/events/{meetings[user['id']]}")
                wanted = "Available"
            pending.append(("meeting", self._made("events", user["id"]), lambda s, m=mail, w=wanted: any(
                u.get("EmailAddress") == m and u.get("CurrentProfileName") == w for u in s["users"])))
            self._pause(interval, pending, results)
        return self._collect(pending, results, final=True, timeout=timeout)

    def _pause(self, seconds: float, pending: list[tuple[str, float, Any]], results: dict[str, list[float]]) -> None:
        """Wait ``seconds`` before the next change, polling 3CX every 0.5 s meanwhile (so a change is
        timed when it shows, not at the next check after a whole round of changes)."""
        end = time.monotonic() + seconds
        while True:
            self._collect(pending, results, final=False)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.5, left))

    def warm_up(self, timeout: float) -> float:
        """Rename one user and wait until 3CX shows it; return the seconds it took (the cold start)."""
        user = self.users[-1]
        mail, surname = user["mail"].lower(), "BenchWarmUp"
        made = time.monotonic()
        self.cluster.graph_admin("PATCH", f"users/{user['id']}", json={"surname": surname})
        while time.monotonic() - made < timeout:
            if any(u.get("EmailAddress") == mail and u.get("LastName") == surname for u in self.pbx()["users"]):
                return time.monotonic() - made
            time.sleep(0.5)
        raise RuntimeError(f"warm-up rename not in 3CX after {timeout} s")

    def _made(self, queue_kind: str, user_id: str) -> float:
        """Record a change just made (for the phase breakdown); return its monotonic time."""
        made = time.monotonic()
        self.changes.append({"kind": queue_kind, "user_id": user_id, "made": dt.datetime.now(dt.UTC),
                             "monotonic": made})
        return made

    def _collect(self, pending: list[tuple[str, float, Any]], results: dict[str, list[float]], *, final: bool,
                 timeout: float = 0.0) -> dict[str, list[float]]:
        """Poll 3CX; move each change seen from ``pending`` to ``results``; with ``final`` wait for all."""
        deadline = time.monotonic() + timeout
        while pending:
            state, now = self.pbx(), time.monotonic()
            for item in list(pending):
                kind, made, probe = item
                if probe(state):
                    results.setdefault(kind, []).append(now - made)
                    for change in self.changes:
                        if change["monotonic"] == made:
                            change["seen"] = change["made"] + dt.timedelta(seconds=now - made)
                    pending.remove(item)
            if not final or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if final:
            for kind, _, _ in pending:
                results.setdefault(f"{kind}_missing", []).append(timeout)
        return results


#: The phases of one change, in order: (name, from timestamp, to timestamp).
PHASES = (
    ("notify", "made", "received_at"),          # Graph emulator delivery -> receiver -> push_queue
    ("trigger", "received_at", "signalled_at"),  # the AssetWatcher trigger's poll marks the row
    ("run_queued", "signalled_at", "queued_at"),  # asset event -> the scheduler creates the run
    ("run_start", "queued_at", "run_start"),     # queued -> running (waits for the run in progress)
    ("task_start", "run_start", "task_start"),   # scheduling round + executor + task process start
    ("claim", "task_start", "claimed_at"),       # task start-up until it drains the queue
    ("work", "claimed_at", "seen"),              # the push run's deltas/plan/apply -> 3CX write seen
)


def phase_breakdown(changes: list[dict[str, Any]], staging_url: str, meta_url: str) -> dict[str, Any]:
    """Per change, the seconds spent in each of :data:`PHASES`, from timestamps the system records.

    ``push_queue`` gives received/signalled/claimed (the first row of the change's kind and user
    received after it was made); the claiming run's ``dag_run`` row gives queued and start, its
    ``sync_notified`` task instance the task start. Returns p50/p95/max per phase.
    """
    staging, meta = sa.create_engine(staging_url), sa.create_engine(meta_url)
    rows_of: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    unmatched = 0
    try:
        with staging.connect() as sconn, meta.connect() as mconn:
            for change in changes:
                row = sconn.execute(sa.text(
                    "SELECT received_at, signalled_at, claimed_at, claimed_by FROM push_queue "
                    "WHERE kind = :kind AND user_id = :user AND received_at >= :made "
                    "ORDER BY received_at LIMIT 1"),
                    {"kind": change["kind"], "user": change["user_id"], "made": change["made"]}).mappings().first()
                if row is None or not row["claimed_by"] or "seen" not in change:
                    unmatched += 1
                    continue
                run_id = str(row["claimed_by"]).split("/", 1)[1]
                run = mconn.execute(sa.text(
                    "SELECT r.queued_at, r.start_date AS run_start, t.start_date AS task_start "
                    "FROM dag_run r JOIN task_instance t ON t.dag_id = r.dag_id AND t.run_id = r.run_id "
                    "WHERE r.dag_id = 'm365_3cx_push' AND r.run_id = :run_id AND t.task_id = 'sync_notified'"),
                    {"run_id": run_id}).mappings().first()
                if run is None:
                    unmatched += 1
                    continue
                stamps = {**change, **row, **run}
                for name, start, end in PHASES:
                    if stamps.get(start) and stamps.get(end):
                        # a run queued (or started) before this row was signalled: no wait in that phase
                        rows_of[name].append(max(0.0, (stamps[end] - stamps[start]).total_seconds()))
    finally:
        staging.dispose()
        meta.dispose()
    return {**{name: summary(values) for name, values in rows_of.items()}, "unmatched": unmatched}



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=20, help="changes of each kind per phase (>= 20)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two changes")
    parser.add_argument("--users", type=int, default=30, help="users in the emulated tenant")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the last change")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--skip-timed", action="store_true", help="measure push only")
    args = parser.parse_args(argv)

    launcher = _launcher()
    # the timed phase's delta interval (read by the dag-processor when it parses the delta DAG)
    cluster = launcher.PushCluster(graph_users=args.users, settings=SETTINGS,
                                   extra_env={"M365_3CX_DELTA_MINUTES": "1"})
    began = time.monotonic()
    report: dict[str, Any] = {"changes_per_kind": args.changes, "interval_s": args.interval,
                              "machine": os.uname().nodename, "cpus": os.cpu_count(),
                              "at": dt.datetime.now(dt.UTC).isoformat()}
    try:
        cluster.start()
        report["cluster_ready_s"] = round(time.monotonic() - began, 1)
        from m365_3cx.staging.control import set_writes_enabled

        engine = sa.create_engine(cluster._pg_url(cluster.staging_db))
        from m365_3cx.staging.schema import create_schema

        create_schema(engine)
        with engine.begin() as conn:
            set_writes_enabled(conn, True, changed_by="bench_push", now=dt.datetime.now(dt.UTC), note="bench")
        engine.dispose()
        members = sorted((u for u in cluster.graph_admin("GET", "state")["users"]
                          if u.get("mail") and u.get("userType", "Member") == "Member" and u.get("accountEnabled")
                          and not u.get("deleted")), key=lambda u: u["id"])[:20]
        for user in members:  # quiet calendars: every meeting of the bench is the only one
            for event in cluster.graph_admin("GET", f"users/{user['id']}/mailbox")["events"]:
                cluster.graph_admin("DELETE", f"users/{user['id']}/events/{event['id']}")
            cluster.graph_admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "disabled"})
        bench = Bench(cluster, members)
        cluster._request("PATCH", "/api/v2/dags/m365_3cx_push", json={"is_paused": True})
        bench.run_rest("m365_3cx_full_sync")
        bench.run_rest("m365_3cx_subscriptions")
        cluster._request("PATCH", "/api/v2/dags/m365_3cx_push", json={"is_paused": False})
        report["subscriptions"] = len(cluster.graph_admin("GET", "subscriptions")["subscriptions"])

        # Steady state, not cold start: the triggerer starts the watcher's trigger on a later loop
        # after the DAG is unpaused; one warm-up rename carried to 3CX shows it is running (timed
        # and reported apart, not counted in the figures).
        report["warmup_s"] = round(bench.warm_up(args.timeout), 2)
        meetings: dict[str, str] = {}
        started = time.monotonic()
        push = bench.phase("push", args.changes, args.interval, args.timeout, meetings)
        report["push"] = {kind: summary(values) for kind, values in push.items()}
        report["push"]["all"] = summary([v for values in push.values() for v in values])
        report["push"]["runs"] = len(cluster.runs("m365_3cx_push"))
        report["push"]["phase_s"] = round(time.monotonic() - started, 1)
        report["push"]["phases"] = phase_breakdown(bench.changes, cluster._pg_url(cluster.staging_db),
                                                   cluster._pg_url(cluster.meta_db))
        report["load_average"] = [round(v, 2) for v in os.getloadavg()]

        if not args.skip_timed:
            cluster._request("PATCH", "/api/v2/dags/m365_3cx_push", json={"is_paused": True})
            time.sleep(5)
            cluster._request("PATCH", "/api/v2/dags/m365_3cx_delta", json={"is_paused": False})
            started = time.monotonic()
            timed = bench.phase("timed", args.changes, args.interval, args.timeout, meetings)
            report["timed_1min"] = {kind: summary(values) for kind, values in timed.items()}
            report["timed_1min"]["all"] = summary([v for values in timed.values() for v in values])
            report["timed_1min"]["runs"] = len(cluster.runs("m365_3cx_delta"))
            report["timed_1min"]["phase_s"] = round(time.monotonic() - started, 1)
    finally:
        cluster.stop()
    report["total_s"] = round(time.monotonic() - began, 1)

    if "warmup_s" in report:
        print(f"\ncold start (push DAG unpaused -> first rename in 3CX, not counted): {report['warmup_s']:.2f} s")
    print("\nchange -> 3CX latency, seconds (p50 / p95 / max, n)")
    for phase in ("push", "timed_1min"):
        for kind in ("rename", "contact", "meeting", "all"):
            fig = report.get(phase, {}).get(kind)
            if fig and fig.get("n"):
                print(f"  {phase:<11} {kind:<8} {fig['p50']:>7.2f} / {fig['p95']:>7.2f} / {fig['max']:>7.2f}"
                      f"  n={fig['n']}")
    phases = report.get("push", {}).get("phases") or {}
    if phases:
        print("push phases, seconds (p50 / p95 / max, n) — unmatched changes:", phases.get("unmatched"))
        for name, _, _ in PHASES:
            fig = phases.get(name) or {}
            if fig.get("n"):
                print(f"  {name:<11} {fig['p50']:>7.2f} / {fig['p95']:>7.2f} / {fig['max']:>7.2f}  n={fig['n']}")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
