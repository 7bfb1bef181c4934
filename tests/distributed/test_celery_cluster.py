"""A real distributed run: CeleryExecutor, Redis broker, PostgreSQL, two Celery workers.

``scripts/celery_cluster.py`` starts the api-server, scheduler, dag-processor and two
workers (``w1``, ``w2``; each with its own AIRFLOW_HOME, working directory and TMPDIR)
plus both emulators. The sync DAGs are triggered through the REST API, as an ops tool
would, and the outcome is checked on the 3CX emulator. Tasks of one run executed by
both workers prove that the tasks hand over nothing but database rows (and XCom): a
task relying on a local file written by its upstream would fail or go wrong as soon
as the two ran on different workers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

_config: Any = None


@pytest.fixture(autouse=True, scope="module")
def _report_to_terminal(request: pytest.FixtureRequest) -> None:
    """Let this module's figures reach the CI log even when the test passes (output is captured)."""
    global _config
    _config = request.config


def report(text: str) -> None:
    """Write to the test log past pytest's output capture (so CI shows it for a passing test)."""
    if _config is None:
        print(text)
        return
    capture = _config.pluginmanager.getplugin("capturemanager")
    terminal = _config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        for line in str(text).splitlines() or [""]:
            terminal.write_line(line)


pytestmark = [pytest.mark.distributed, pytest.mark.postgres, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("w1", "w2")
RUN_TIMEOUT = 180.0


def _launcher() -> ModuleType:
    """``scripts/celery_cluster.py`` (scripts/ is not a package)."""
    name = "m365_3cx_celery_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "celery_cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """The whole cluster for this module; torn down (processes, databases, home) even on failure."""
    launcher = _launcher()
    started = time.monotonic()
    instance = launcher.CeleryCluster(graph_users=40, concurrency=2)
    try:
        instance.start()
    except BaseException:
        instance.stop()
        raise
    report(f"\ncluster ready in {time.monotonic() - started:.1f} s (migrate done at "
          f"{instance.timings['migrate_done']:.1f} s); home {instance.home}")
    try:
        yield instance
    finally:
        home = instance.home
        instance.stop()
        left = instance.leftovers()
        assert not left, "processes left behind by the cluster:\n" + "\n".join(left)
        assert not home.exists(), f"cluster home {home} was not removed"
        assert not instance.databases, f"databases not dropped: {instance.databases}"


def run_and_wait(cluster: Any, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Trigger ``dag_id`` via REST, wait for it, print its per-task table; fail with logs unless success."""
    started = time.monotonic()
    run_id = cluster.trigger(dag_id, conf)
    state = cluster.wait(dag_id, run_id, timeout=RUN_TIMEOUT)
    tis = cluster.task_instances(dag_id, run_id)
    report(f"\n{dag_id} {run_id}: {state} in {time.monotonic() - started:.1f} s")
    report(cluster.format_table(tis))
    if state != "success":
        logs = []
        for ti in tis:
            if ti.get("state") in ("failed", "upstream_failed", "up_for_retry") and ti.get("try_number"):
                text = cluster.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], ti.get("map_index", -1))
                logs.append(f"----- {ti['task_id']}[{ti.get('map_index', -1)}] -----\n{text[-4000:]}")
        pytest.fail(f"{dag_id} run {run_id} ended {state}\n{cluster.format_table(tis)}\n" + "\n".join(logs)
                    + f"\n{cluster.logs_report()}")
    return run_id, tis


def worker_of(ti: dict[str, Any]) -> str | None:
    """``w1``/``w2`` from the task instance's hostname (``w1@<host>``), None when it did not run."""
    hostname = ti.get("hostname") or ""
    node = hostname.split("@", 1)[0]
    return node if node in WORKERS and "@" in hostname else None


def pbx_users(cluster: Any) -> dict[str, dict[str, Any]]:
    return {u["Number"]: u for u in cluster.threecx_admin("GET", "state")["users"]}


def managed_members(cluster: Any) -> list[dict[str, Any]]:
    """Graph users the settings put in 3CX: enabled, not deleted members."""
    return [u for u in cluster.graph_admin("GET", "state")["users"]
            if u.get("accountEnabled") and not u.get("deleted") and u.get("userType", "Member") != "Guest"]


def last_counts(cluster: Any, dag_id: str) -> dict[str, Any]:
    """``counts`` of the newest ``sync_runs`` row of ``dag_id`` in the cluster's staging database."""
    engine = sa.create_engine(cluster._pg_url(cluster.staging_db))
    try:
        with engine.connect() as conn:
            counts = conn.execute(sa.text(
                "SELECT counts FROM sync_runs WHERE dag_id = :d ORDER BY started_at DESC LIMIT 1"
            ), {"d": dag_id}).scalar_one()
    finally:
        engine.dispose()
    return counts if isinstance(counts, dict) else json.loads(counts or "{}")


def staging_rows(cluster: Any, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query on the cluster's staging database."""
    engine = sa.create_engine(cluster._pg_url(cluster.staging_db))
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
    finally:
        engine.dispose()


def pbx_writes(cluster: Any) -> int:
    """Write requests (POST/PATCH/DELETE on /xapi/) the 3CX emulator has served since its counters were reset."""
    counters = cluster.threecx_admin("GET", "counters")
    return sum(n for key, n in counters["requests"].items()
               if key.split(" ", 1)[0] in ("POST", "PATCH", "DELETE") and "/xapi/" in key)


def wait_backfill(cluster: Any, dag_id: str, known: set[str], expected: int) -> list[dict[str, Any]]:
    """Wait for ``expected`` new backfill runs of ``dag_id`` to finish and their backfill to complete; return them."""
    deadline = time.monotonic() + RUN_TIMEOUT * expected
    while time.monotonic() < deadline:
        runs = [r for r in cluster.runs(dag_id, "backfill") if r["dag_run_id"] not in known]
        done = len(runs) >= expected and all(r["state"] in ("success", "failed") for r in runs)
        # Airflow allows one running backfill per DAG; the scheduler marks it complete (every 30 s) after its runs
        if done and all(b["completed_at"] for b in cluster.backfills(dag_id)):
            return runs
        time.sleep(2)
    pytest.fail(f"backfill runs of {dag_id} did not finish: {cluster.runs(dag_id, 'backfill')}")


def test_not_live_no_path_writes_until_an_audited_go_live(cluster: Any) -> None:
    """A fresh install writes nothing to 3CX — manual run, backfill with and without conf — until go-live."""
    cluster.threecx_admin("DELETE", "counters")
    before = pbx_users(cluster)

    run_id, _ = run_and_wait(cluster, "m365_3cx_full_sync")  # a manual run, no conf: dry_run false
    backfills: set[str] = set()
    for day, conf in (("2026-11-20", '{"dry_run": true}'), ("2026-11-21", None)):
        args = ["backfill", "create", "--dag-id", "m365_3cx_full_sync", "--from-date", day,
                "--to-date", f"{day[:-2]}{int(day[-2:]) + 1}"]
        report(cluster.airflow(f"backfill-{day}", *args, *(["--dag-run-conf", conf] if conf else []))[-600:])
        runs = wait_backfill(cluster, "m365_3cx_full_sync", backfills, 1)
        assert [r["state"] for r in runs] == ["success"], runs
        assert (runs[0]["conf"] or {}).get("dry_run") is (True if conf else None), runs[0]
        backfills.update(r["dag_run_id"] for r in runs)

    assert pbx_writes(cluster) == 0, "a run wrote to 3CX while writes were off"
    assert pbx_users(cluster) == before
    rows = staging_rows(cluster, "SELECT run_id, dry_run, dry_reason FROM sync_runs WHERE dag_id = :d",
                        d="m365_3cx_full_sync")
    by_run = {r["run_id"]: r for r in rows}
    assert by_run[run_id]["dry_run"] is True and by_run[run_id]["dry_reason"] == "writes_off"
    reasons = sorted(by_run[r]["dry_reason"] for r in backfills)
    assert reasons == ["requested,writes_off", "writes_off"], rows
    planned = staging_rows(cluster, "SELECT count(*) AS n FROM sync_plan WHERE run_key = :k AND action = 'create'",
                           k=f"m365_3cx_full_sync/{run_id}")
    assert planned[0]["n"] > 0, "the dry run stored no plan"

    # going live needs the typed confirmation, and is recorded with the user who triggered it
    refused = cluster.trigger("m365_3cx_go_live", {"writes_enabled": True, "confirm": "yes"})
    assert cluster.wait("m365_3cx_go_live", refused) == "failed"
    assert staging_rows(cluster, "SELECT * FROM sync_control") == []
    live = cluster.trigger("m365_3cx_go_live", {"writes_enabled": True, "confirm": "ENABLE WRITES",
                                                "note": "distributed test"})
    assert cluster.wait("m365_3cx_go_live", live) == "success"
    control = staging_rows(cluster, "SELECT enabled, changed_by, run_key, note FROM sync_control")
    assert control == [{"enabled": True, "changed_by": cluster.username,
                        "run_key": f"m365_3cx_go_live/{live}", "note": "distributed test"}]
    assert len(staging_rows(cluster, "SELECT * FROM sync_control_log")) == 1


def test_full_sync_then_delta_on_two_celery_workers(cluster: Any) -> None:
    began = time.monotonic()
    before = pbx_users(cluster)
    expected = [u for u in managed_members(cluster) if u.get("mail")]
    assert expected, "the Graph emulator has no managed users with mail"

    # -- full sync ---------------------------------------------------------------------------------
    _, full_tis = run_and_wait(cluster, "m365_3cx_full_sync")
    after_full = pbx_users(cluster)
    by_mail = {u.get("EmailAddress"): u for u in after_full.values()}
    for user in expected:
        ext = by_mail.get(user["mail"].lower())
        assert ext is not None, f"no 3CX extension for {user['userPrincipalName']}"
        assert ext["Enabled"] is True, ext
        assert ext["LastName"] == user["surname"], ext
    assert len(after_full) == len(before) + len(managed_members(cluster))
    for number, unmanaged in before.items():
        assert after_full[number] == unmanaged, f"unmanaged extension {number} was modified by the full sync"

    # -- change the tenant, delta ------------------------------------------------------------------
    renamed, disabled = expected[0], expected[1]
    cluster.graph_admin("PATCH", f"users/{renamed['id']}", json={"surname": "Distributed-Renamed"})
    cluster.graph_admin("POST", f"users/{disabled['id']}/disable")
    _, delta_tis = run_and_wait(cluster, "m365_3cx_delta")

    after_delta = pbx_users(cluster)
    by_mail = {u.get("EmailAddress"): u for u in after_delta.values()}
    renamed_ext = by_mail[renamed["mail"].lower()]
    disabled_ext = by_mail[disabled["mail"].lower()]
    assert renamed_ext["LastName"] == "Distributed-Renamed", renamed_ext
    assert renamed_ext["Enabled"] is True, renamed_ext
    assert disabled_ext["Enabled"] is False, disabled_ext
    changed = {renamed_ext["Number"], disabled_ext["Number"]}
    assert set(after_delta) == set(after_full), "the delta created or removed extensions"
    for number, ext in after_full.items():
        if number not in changed:
            assert after_delta[number] == ext, f"extension {number} changed although its user did not"
    counts = last_counts(cluster, "m365_3cx_delta")
    assert counts["extract"]["mode"] == "delta", counts  # the delta link was found in the database
    assert counts["apply"]["updated"] == 1, counts
    assert counts["apply"]["disabled"] == 1, counts

    # -- where the tasks ran -----------------------------------------------------------------------
    spread: dict[str, set[str]] = {}
    for dag_id, tis in (("m365_3cx_full_sync", full_tis), ("m365_3cx_delta", delta_tis)):
        ran = [ti for ti in tis if ti.get("state") == "success"]
        unknown = [ti["task_id"] for ti in ran if worker_of(ti) is None]
        assert not unknown, f"{dag_id}: tasks with no w1/w2 hostname: {unknown}"
        for ti in ran:  # Celery's own logs must agree with the hostname the task reported
            assert cluster.celery_workers_of(ti["id"]) == [worker_of(ti)], (
                f"{dag_id} {ti['task_id']}: hostname {ti.get('hostname')} but Celery logs show "
                f"{cluster.celery_workers_of(ti['id'])}")
        spread[dag_id] = {worker_of(ti) for ti in ran}  # type: ignore[misc]
        mapped = [ti for ti in tis if ti.get("map_index", -1) >= 0]
        report(f"{dag_id}: workers {sorted(spread[dag_id])}; "
              + ", ".join(f"{w}: {sum(worker_of(ti) == w for ti in ran)} tasks" for w in WORKERS)
              + (f"; {len(mapped)} mapped task instances on "
                 f"{sorted({worker_of(ti) for ti in mapped if worker_of(ti)})}" if mapped else "; no mapped tasks"))
    assert any(workers == set(WORKERS) for workers in spread.values()), (
        f"no run had tasks on both workers: {spread}\n{cluster.logs_report()}")
    # Mapped per-user shards: more shards are queued at once than one worker may hold (concurrency 2,
    # prefetch 1, acks late), so the shards of a mapped task must land on both workers.
    shards: dict[str, set[str]] = {}
    for dag_id, tis in (("m365_3cx_full_sync", full_tis), ("m365_3cx_delta", delta_tis)):
        for ti in tis:
            if ti.get("map_index", -1) >= 0 and worker_of(ti):
                shards.setdefault(f"{dag_id}.{ti['task_id']}", set()).add(worker_of(ti))  # type: ignore[arg-type]
    assert "m365_3cx_full_sync.contacts.extract_contacts" in shards, f"no mapped contact shards ran: {shards}"
    assert any(workers == set(WORKERS) for workers in shards.values()), (
        f"mapped shards did not spread across both workers: {shards}")
    report(f"test body (two runs + checks) took {time.monotonic() - began:.1f} s")


def test_removals_over_the_guard_wait_for_an_answer_through_the_rest_api(cluster: Any) -> None:
    """Reject applies all but the removals; the next full sync asks again and Approve applies them."""
    members = [u for u in managed_members(cluster) if u.get("mail")]
    victims, renamed = members[2:10], members[10]
    for user in victims:
        cluster.graph_admin("POST", f"users/{user['id']}/disable")
    cluster.graph_admin("PATCH", f"users/{renamed['id']}", json={"surname": "Approval-Renamed"})
    numbers = {u.get("EmailAddress"): n for n, u in pbx_users(cluster).items()}

    for dag_id, answer in (("m365_3cx_delta", "Reject"), ("m365_3cx_full_sync", "Approve")):
        run_id = cluster.trigger(dag_id)
        detail = cluster.wait_for_hitl(dag_id, run_id, "approve_extension_removals")
        body = detail["body"]
        for user in victims:
            line = next((ln for ln in body.splitlines() if f"| {user['userPrincipalName']} |" in ln), None)
            assert line is not None and f"| {numbers[user['mail'].lower()]} |" in line, (user, body[:2000])
        assert detail["options"] == ["Approve", "Reject"], detail
        answered = cluster.answer_hitl(dag_id, run_id, "approve_extension_removals", answer)
        assert answered["chosen_options"] == [answer], answered
        deadline = time.monotonic() + RUN_TIMEOUT
        while cluster.run_state(dag_id, run_id) not in ("success", "failed") and time.monotonic() < deadline:
            for other in cluster.hitl_details(dag_id, run_id):  # the phonebook may ask too (owners disabled)
                if other["task_instance"]["state"] == "awaiting_input" and not other.get("response_received"):
                    cluster.answer_hitl(dag_id, run_id, other["task_instance"]["task_id"], answer)
            time.sleep(2)
        state = cluster.wait(dag_id, run_id, timeout=RUN_TIMEOUT)
        report(f"\n{dag_id} {run_id} ({answer}): {state}\n"
               + cluster.format_table(cluster.task_instances(dag_id, run_id)))
        assert state == "success"
        by_mail = {u.get("EmailAddress"): u for u in pbx_users(cluster).values()}
        assert by_mail[renamed["mail"].lower()]["LastName"] == "Approval-Renamed"
        enabled = [by_mail[u["mail"].lower()]["Enabled"] for u in victims]
        assert enabled == ([True] * 8 if answer == "Reject" else [False] * 8), (answer, enabled)
        decision = staging_rows(cluster, "SELECT status, decided_by FROM sync_approvals WHERE run_id = :r",
                                r=run_id)
        assert decision == [{"status": "approved" if answer == "Approve" else "rejected",
                             "decided_by": cluster.username}], decision


def test_console_needs_a_login_and_shows_the_runs(cluster: Any) -> None:
    """The plugin's ops console is served by the api-server, behind Airflow's auth, from staging."""
    import requests

    anonymous = requests.get(f"{cluster.api_url}/m365-3cx/api/health", timeout=30)
    assert anonymous.status_code in (401, 403), anonymous.status_code
    health = cluster._request("GET", "/m365-3cx/api/health").json()
    users = next(f for f in health["features"] if f["name"] == "users")
    assert users["last_success"] is not None, health
    runs = cluster._request("GET", "/m365-3cx/api/runs", params={"dag_id": "m365_3cx_full_sync"}).json()
    assert runs["runs"]["items"][0]["status"] == "success", runs
    page = cluster._request("GET", "/m365-3cx/runs").text
    assert "m365_3cx_full_sync" in page and "Users → extensions" in page
