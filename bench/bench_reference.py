"""Reference benchmark: every pipeline step against the emulators, four modes plus a naive baseline.

Starts the Graph and 3CX emulators as child processes (HTTPS, ``--latency-ms`` added to every
request), a throwaway PostgreSQL staging database (or ``--staging URL``), and runs the product's own
pipeline steps (:mod:`m365_3cx.pipeline`) in DAG order, without Airflow's task overhead:

``initial_full``  empty staging and an empty phonebook: every extension, entry and status is new;
``repeat_full``   the same tenant again: must write nothing to 3CX;
``delta_none``    a delta run with no change in Microsoft 365;
``delta_churn``   a delta run after 1 % churn (users renamed, contacts edited, events added now).

Mapped tasks (contact and calendar shards) run on ``--graph-slots`` workers, like the ``graph_api``
pool's 4 slots: forked processes by default, as Airflow runs every task instance in a process of its
own (``--mapped-in threads`` runs them on threads of the bench process, sharing one interpreter lock).
Per mode it prints and writes to JSON: wall time, per-step wall and SQL statements
(a SQLAlchemy ``before_cursor_execute`` listener: one per round trip, an executemany counts once),
Graph and 3CX requests per endpoint, 3CX reads and writes against the changes that were really
needed, peak RSS of the product per step (its ``VmHWM`` is reset before each step: in Airflow every
task is a process of its own) and of the whole process tree (the sum of proportional set sizes, so
pages a forked worker shares are counted once), CPU seconds of the product and of each
emulator, the theoretical minimum
request counts and the latency floor, and the ratio to each. Then a *naive* client (sequential, no
``$batch``, no delta, GET-then-PATCH per record) repeats the no-change pass over a sample of users;
its time is scaled to the whole tenant (it is linear in the records by construction).

    .venv/bin/python bench/bench_reference.py --users 10000 --contacts 25 --events 10 --latency-ms 20

Figures are printed and written (``--json``), never asserted: machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "include"))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from m365_3cx.graph.auth import GraphCredentials  # noqa: E402
from m365_3cx.graph.client import GraphClient  # noqa: E402
from m365_3cx.pipeline import contacts as contacts_steps  # noqa: E402
from m365_3cx.pipeline import presence as presence_steps  # noqa: E402
from m365_3cx.pipeline import users as users_steps  # noqa: E402
from m365_3cx.settings import Settings  # noqa: E402
from m365_3cx.staging.control import set_writes_enabled  # noqa: E402
from m365_3cx.staging.db import make_engine  # noqa: E402
from m365_3cx.staging.schema import create_schema  # noqa: E402
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials, clear_token_cache  # noqa: E402

PAGE_USERS = 999
PAGE_CONTACTS = 100
PAGE_3CX = 100
BATCH = 20
MODES = ("initial_full", "repeat_full", "delta_none", "delta_churn")
WRITE_PREFIXES = ("POST ", "PATCH ", "PUT ", "DELETE ")


# ----------------------------------------------------------------------------- measurement


class SqlCounter:
    """Counts the statements an engine sends (``before_cursor_execute``; executemany counts once)."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self.count = 0
        self._lock = threading.Lock()
        sa.event.listen(engine, "before_cursor_execute", self._hit)

    def _hit(self, *_args: Any) -> None:
        with self._lock:
            self.count += 1


def _status_kib(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU a process has used so far (``/proc/<pid>/stat``), in seconds; with
    ``reaped_children``, plus that of its children that have ended (the mapped tasks' processes)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                found.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return found


def reset_peak_rss() -> bool:
    """Give freed memory back (``gc``, glibc ``malloc_trim``), then reset this process's ``VmHWM`` to
    its current RSS (Linux: ``5`` into ``/proc/self/clear_refs``), so a step's peak is its own plus
    what earlier steps still hold (caches, the emulators' clients), not their garbage."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _pss_kib(pid: int) -> int:
    """A process's proportional set size (``/proc/<pid>/smaps_rollup``): pages shared with other
    processes (a forked worker's inherited heap) count in part, so a sum over a tree counts them once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return _status_kib(pid, "VmRSS")
    return _status_kib(pid, "VmRSS")


class RssSampler:
    """Samples the memory of this process, its mapped-task workers and the emulator processes (the
    tree) every 0.2 s: the sum of their proportional set sizes, so the pages a forked worker shares
    with this process are not counted twice."""

    def __init__(self, children: list[int]) -> None:
        self.children = children
        self.peak_tree_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            pids = {os.getpid(), *self.children, *child_pids(os.getpid())}  # + the mapped tasks' processes
            total = sum(_pss_kib(pid) for pid in pids)
            self.peak_tree_kib = max(self.peak_tree_kib, total)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def reset(self) -> None:
        self.peak_tree_kib = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


# ----------------------------------------------------------------------------- emulators


@dataclass
class Emulator:
    name: str
    proc: subprocess.Popen[str]
    info: dict[str, Any]
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def base(self) -> str:
        return str(self.info.get("graph_url") or self.info["base_url"])

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base}/_emulator/{path.lstrip('/')}",
                                        verify=self.info["ca_bundle"], timeout=600, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def counters(self) -> dict[str, int]:
        return dict(self.admin("GET", "counters")["requests"])

    def stop(self) -> None:
        self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_emulator(name: str, module: str, args: list[str], tls_dir: Path, log_dir: Path) -> Emulator:
    log = open(log_dir / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", "0", "--tls-dir", str(tls_dir), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{name} emulator did not start; see {log_dir / (name + '.log')}")
    return Emulator(name, proc, json.loads(line))


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def _is_mailbox_route(key: str) -> bool:
    return any(part in key for part in ("/contactFolders", "/contacts", "/calendarView", "/mailboxSettings",
                                        "/events"))


def graph_wire(requests_by_key: dict[str, int], batched: bool) -> dict[str, int]:
    """Requests that crossed the wire: ``$batch`` items are counted by the emulator under their own route
    as well, so when batching they are reported apart (``inner``)."""
    wire = {k: v for k, v in requests_by_key.items() if not (batched and _is_mailbox_route(k))}
    inner = sum(v for k, v in requests_by_key.items() if batched and _is_mailbox_route(k))
    return {"total": sum(wire.values()), "inner_batch_items": inner}


# ----------------------------------------------------------------------------- the product's run


def fresh_process() -> None:
    """Each Airflow task runs in a process of its own: forget in-process memos between steps."""
    from m365_3cx.transform.phones import _normalise

    _normalise.cache_clear()


@dataclass
class StepResult:
    name: str
    wall: float
    sql: int
    result: Any
    peak_kib: int = 0


@dataclass
class Harness:
    engine: sa.engine.Engine
    sql: SqlCounter
    graph_info: dict[str, Any]
    pbx_info: dict[str, Any]
    settings: Settings
    graph_slots: int
    mapped_in: str = "processes"
    steps: list[StepResult] = field(default_factory=list)

    def graph(self) -> GraphClient:
        g = self.graph_info
        return GraphClient(GraphCredentials(
            tenant_id=g["tenant_id"], client_id=g["client_id"], client_secret=g["client_secret"],
            authority_host=g["authority"].rsplit("/", 1)[0], graph_url=g["graph_url"], ca_bundle=g["ca_bundle"]),
            batch_concurrency=self.settings.graph.batch_concurrency)

    def threecx(self) -> ThreeCXClient:
        p = self.pbx_info
        return ThreeCXClient(ThreeCXCredentials(p["base_url"], p["client_id"], p["client_secret"], p["ca_bundle"]),
                             read_concurrency=self.settings.threecx.read_concurrency)

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        fresh_process()
        reset_peak_rss()  # each step's own peak, as if it ran in a process of its own (it does in Airflow)
        before, started = self.sql.count, time.perf_counter()
        if name in os.environ.get("BENCH_PROFILE", "").split(","):  # profile one step: BENCH_PROFILE=step,...
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            result = profiler.runcall(fn, *args, **kwargs)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        else:
            result = fn(*args, **kwargs)
        self.steps.append(StepResult(name, time.perf_counter() - started, self.sql.count - before, result,
                                     _status_kib(os.getpid(), "VmHWM")))
        return result

    def mapped(self, name: str, fn: Callable[..., Any], shards: list[dict[str, Any]], make_client: Callable[[], Any],
               *args: Any) -> list[Any]:
        """Run one mapped task's instances on ``graph_slots`` workers, each instance with its own client:
        forked processes (``mapped_in="processes"``: as Airflow runs every task instance in a process of
        its own, so they do not share one interpreter lock) or threads of this process."""
        global _MAPPED
        fresh_process()
        reset_peak_rss()
        before, started = self.sql.count, time.perf_counter()
        workers = max(1, min(self.graph_slots, len(shards) or 1))
        child_sql = 0
        peak_kib = 0
        _MAPPED = (self, fn, make_client, args, shards)
        if name in os.environ.get("BENCH_PROFILE", "").split(","):  # the shards one after another, profiled
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            results = profiler.runcall(lambda: [_run_shard(i)[0] for i in range(len(shards))])
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        elif self.mapped_in == "processes" and len(shards) > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_child_started)
            try:
                outcomes = pool.map(_run_shard, range(len(shards)), chunksize=1)
            finally:
                pool.close()
                pool.join()  # reaped: their CPU time counts as the product's
            results = [result for result, _, _ in outcomes]
            child_sql = sum(sql for _, sql, _ in outcomes)
            peak_kib = max((kib for _, _, kib in outcomes), default=0)
        else:  # threads: their statements are counted by this process's counter already
            with ThreadPoolExecutor(max_workers=workers) as threads:
                results = [result for result, _, _ in threads.map(_run_shard, range(len(shards)))]
        _MAPPED = None
        self.steps.append(StepResult(f"{name} x{len(shards)}", time.perf_counter() - started,
                                     self.sql.count - before + child_sql, None,
                                     max(peak_kib, _status_kib(os.getpid(), "VmHWM"))))
        return results


_MAPPED: tuple[Harness, Callable[..., Any], Callable[[], Any], tuple[Any, ...], list[dict[str, Any]]] | None = None
"""The mapped step being run (read by its forked workers, which inherit it)."""


def _child_started() -> None:
    """A forked worker: SQLAlchemy's pooled connections belong to the parent, open its own."""
    assert _MAPPED is not None
    _MAPPED[0].engine.dispose(close=False)
    reset_peak_rss()


def _run_shard(index: int) -> tuple[Any, int, int]:
    """One mapped task instance: its result, the SQL statements it sent and this process's peak RSS
    (KiB); the last two are what a forked worker reports back to the parent."""
    assert _MAPPED is not None
    h, fn, make_client, args, shards = _MAPPED
    before = h.sql.count
    with make_client() as client:
        result = fn(h.engine, client, h.settings, *args[:2], shards[index], *args[2:])
    return result, h.sql.count - before, _status_kib(os.getpid(), "VmHWM")


def run_pipeline(h: Harness, mode: str, label: str) -> dict[str, Any]:
    """One DAG run (users, contacts, presence) through the pipeline steps; returns the apply counts."""
    run = users_steps.RunInfo.create("m365_3cx_full_sync" if mode == "full" else "m365_3cx_delta",
                                     f"bench-{label}-{time.time_ns()}", mode)
    now = datetime.now(UTC)
    applied: dict[str, Any] = {}
    h.step("start_run", users_steps.start_run, h.engine, run, now)
    with h.graph() as graph, h.threecx() as pbx:
        h.step("extract_users", users_steps.extract_users, h.engine, graph, h.settings, run.run_key, mode, now)
        pending = users_steps.pending_user_keys(h.engine, run.run_key) if mode == "delta" else None
        if mode == "full" or pending:
            h.step("snapshot_threecx", users_steps.snapshot_threecx, h.engine, pbx, run.run_key, now, h.settings)
            h.step("transform_extensions", users_steps.transform_users, h.engine, h.settings, run.run_key, now)
            h.step("plan_extensions", users_steps.plan_users, h.engine, h.settings, run.run_key, pending, now)
            applied["extensions"] = h.step("apply_extensions", users_steps.apply_users, h.engine, pbx, h.settings,
                                           run.run_key, now, dry_run=False, allow_mass_removal=True)
        shards = h.step("contact_shards", contacts_steps.contact_shards, h.engine, h.settings)
        counts = h.mapped("extract_contacts", contacts_steps.extract_contacts, shards, h.graph,
                          run.run_key, mode, now)
        if h.step("phonebook_changed", contacts_steps.phonebook_has_work, h.engine, h.settings, run.run_key, mode,
                  counts):
            h.step("snapshot_phonebook", contacts_steps.snapshot_phonebook, h.engine, pbx, h.settings, run.run_key,
                   now, mode=mode)
            h.step("transform_phonebook", contacts_steps.transform_phonebook, h.engine, h.settings, run.run_key, now,
                   mode=mode)
            h.step("plan_phonebook", contacts_steps.plan_phonebook, h.engine, run.run_key, now=now, mode=mode)
            applied["phonebook"] = h.step("apply_phonebook", contacts_steps.apply_phonebook, h.engine, pbx,
                                          h.settings, run.run_key, now, dry_run=False, allow_mass_removal=True,
                                          mode=mode)
        cal_shards = h.step("plan_calendar_shards", presence_steps.plan_shards, h.engine, h.settings)
        h.mapped("extract_calendars", presence_steps.extract_calendars, cal_shards, h.graph, run.run_key, mode, now)
        real_now = datetime.now(UTC)
        h.step("compute_presence", presence_steps.compute_presence, h.engine, pbx, h.settings, run.run_key, real_now,
               incremental=(mode == "delta"))
        applied["presence"] = h.step("apply_presence", presence_steps.apply_presence, h.engine, pbx, h.settings,
                                     run.run_key, real_now, dry_run=False)
    h.step("finish_run", users_steps.finish_run, h.engine, run.run_key, "success", {}, datetime.now(UTC))
    return applied


def real_changes(applied: dict[str, Any]) -> int:
    total = 0
    for name in ("extensions", "phonebook"):
        counts = applied.get(name) or {}
        total += sum(int(counts.get(k) or 0) for k in ("created", "updated", "disabled", "deleted"))
    total += int((applied.get("presence") or {}).get("switched") or 0)
    return total


# ----------------------------------------------------------------------------- census and floors


def census(engine: sa.engine.Engine) -> dict[str, int]:
    """What the tenant holds, from staging after a run: users, mailboxes (presence reads those with an
    extension, the contacts extract every eligible member with a mail address), contact streams and
    their pages, and the default-folder probes the documented API needs.

    A default Contacts folder's id is only learnt from a subfolder's ``parentFolderId`` or a contact's
    (``GET /users/{id}/contacts?$top=1``): Graph v1.0 documents no well-known name for it. So a mailbox
    without subfolders costs one probe before its first delta round, and one every run while its
    default folder is empty (the probe is then the stream's one request)."""
    with engine.connect() as conn:
        users = conn.execute(sa.text("select count(*) from stg_users where not deleted")).scalar_one()
        mailboxes = conn.execute(sa.text("select count(*) from stg_auto_replies where mailbox")).scalar_one()
        eligible = {uid for (uid,) in conn.execute(sa.text(
            "select user_id from stg_users where in_scope and not deleted and mail is not null"
            " and user_principal_name is not null and coalesce(user_type, 'Member') <> 'Guest'"))}
        streams = conn.execute(sa.text(
            "select owner_id, folder_id is null, count(*) from stg_contacts where not deleted"
            " group by owner_id, folder_id")).all()
        resources = [r for (r,) in conn.execute(sa.text(
            "select resource from delta_state where resource like :streams"), {"streams": "contacts:%"})]
        contacts = conn.execute(sa.text("select count(*) from stg_contacts where not deleted")).scalar_one()
        entries = conn.execute(sa.text("select count(*) from phonebook_map")).scalar_one()
        extensions = conn.execute(sa.text("select count(*) from cur_extensions")).scalar_one()
        events = conn.execute(sa.text("select count(*) from stg_events where not deleted")).scalar_one()
    folder_owners = {r.split(":")[1] for r in resources if not r.endswith(":default")}
    folder_streams = sum(1 for r in resources if not r.endswith(":default"))
    default_streams = len(eligible)
    nonempty_pages = sum(max(1, math.ceil(n / PAGE_CONTACTS)) for _owner, _default, n in streams)
    empty_streams = max(0, default_streams + folder_streams - len(streams))
    # non-empty default folders of mailboxes without subfolders: their first round needs a probe first
    first_probes = sum(1 for owner, default, _n in streams if default and owner not in folder_owners)
    return {"users": users, "mailboxes": mailboxes, "contact_mailboxes": default_streams,
            "streams": default_streams + folder_streams, "contact_pages": nonempty_pages + empty_streams,
            "first_probes": first_probes, "contacts": contacts, "phonebook_entries": entries,
            "pbx_users": extensions, "events": events}


def graph_minimum(c: dict[str, int], mode: str, users_changed: int, clients: int) -> int:
    """Fewest Graph requests the data needs: users pages (+1 delta link), and per contacts mailbox a
    folder listing, one request per page of each contact stream (an empty default folder's probe is
    its one request; the initial run also probes the non-empty default folders of mailboxes without
    subfolders), per presence mailbox a calendar read and the automatic replies, packed 20 per
    ``$batch`` over the whole tenant (folders first: the streams depend on them), plus per Graph
    client -- one per task process in Airflow (the users extract and every mapped shard) -- one token
    request and MSAL's one OIDC discovery of the tenant. Neither can be shared between processes
    without sharing a token or persisting MSAL's ``http_cache`` (whose index may hold a hash of the
    token request, secret included), which the product does not do."""
    if mode.endswith("full"):
        users = math.ceil(c["users"] / PAGE_USERS) + 1
        contact_items = c["contact_pages"] + (c.get("first_probes", 0) if mode == "initial_full" else 0)
    else:
        users = max(1, math.ceil(users_changed / PAGE_USERS))
        contact_items = c["streams"]
    folder_batches = math.ceil(c.get("contact_mailboxes", c["mailboxes"]) / BATCH)
    contact_batches = math.ceil(contact_items / BATCH)
    calendar_batches = math.ceil(2 * c["mailboxes"] / BATCH)
    return users + folder_batches + contact_batches + calendar_batches + 2 * clients


def graph_floor(g_min: int, c: dict[str, int], mode: str, clients: int, lat: float, slots: int,
                batch_concurrency: int) -> float:
    """Seconds the fewest Graph requests need on ``slots`` parallel tasks: a plain request costs one
    latency; a ``$batch`` costs two (the emulator adds the latency to the batch and, concurrently, to
    each of its items, as a real service spends time on the inner requests) and ``batch_concurrency``
    of them are in flight per task."""
    batches = g_min - 2 * clients - (math.ceil(c["users"] / PAGE_USERS) + 1 if mode.endswith("full") else 1)
    plain = g_min - max(0, batches)
    return (plain * lat + max(0, batches) * 2 * lat / max(1, batch_concurrency)) / max(1, slots)


def _step_facts(step: StepResult) -> dict[str, Any]:
    """What a step reports about its own work (``compute_presence``: users decided afresh, scope)."""
    result = step.result if isinstance(step.result, dict) else {}
    return {k: result[k] for k in ("decided", "scope") if k in result}


def graph_clients(steps: list[StepResult]) -> int:
    """Graph clients a run made: the run's own (users extract) and one per mapped shard (``name xN``)."""
    return 1 + sum(int(s.name.rsplit(" x", 1)[1]) for s in steps
                   if " x" in s.name and s.name.rsplit(" x", 1)[1].isdigit())


def pbx_minimum_reads(before: dict[str, int], after: dict[str, int], mode: str, users_changed: int,
                      entries_updated: int, decided: int = 0) -> int:
    """Fewest 3CX reads: full runs page through the users, the phonebook and the current profiles as they
    were before the run (at least one page each) plus the profile names; a delta reads the profile names,
    the statuses of the users it decided afresh (40 ids per filtered read), the users only when users
    changed, and only the phonebook entries it updates (40 ids per filtered read)."""
    def pages(n: int) -> int:
        return max(1, math.ceil(n / PAGE_3CX))

    if mode.endswith("full"):
        profiles = pages(after["pbx_users"]) + 1
        return pages(before.get("pbx_users", 0)) + pages(before.get("phonebook_entries", 0)) + profiles
    profiles = 1 + math.ceil(decided / 40)  # the profile names, and the statuses of the users decided afresh
    users = pages(before.get("pbx_users", 0)) if users_changed else 0
    return users + math.ceil(entries_updated / 40) + profiles


# ----------------------------------------------------------------------------- churn


def churn(graph_emu: Emulator, fraction: float, seed: int) -> dict[str, Any]:
    """Rename users, edit contacts, add events starting now, each for ``fraction`` of the tenant."""
    rng = random.Random(seed)
    users = [u for u in graph_emu.admin("GET", "state")["users"] if u.get("mail")]
    picked = rng.sample(users, max(1, int(len(users) * fraction)))
    renamed = 0
    for user in picked:
        graph_emu.admin("PATCH", f"users/{user['id']}", json={"surname": f"{user.get('surname') or 'X'}-churn"})
        renamed += 1
    edited = added = 0
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for user in rng.sample(users, max(1, int(len(users) * fraction))):
        try:
            box = graph_emu.admin("GET", f"users/{user['id']}/mailbox")
        except requests.HTTPError:
            continue
        start = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
        end = (now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
        graph_emu.admin("POST", f"users/{user['id']}/events", json={
            "subject": "bench", "showAs": "busy", "start": {"dateTime": start, "timeZone": "UTC"},
            "end": {"dateTime": end, "timeZone": "UTC"}})
        added += 1
        del box
    target = 0
    boxes = rng.sample(users, min(len(users), max(1, int(len(users) * fraction * 25))))
    per_box = max(1, int(fraction * 100))
    for user in boxes:
        try:
            box = graph_emu.admin("GET", f"users/{user['id']}/mailbox")
        except requests.HTTPError:
            continue
        for contact in box["contacts"][:per_box]:
            phones = list(contact.get("businessPhones") or [])
            graph_emu.admin("PATCH", f"users/{user['id']}/contacts/{contact['id']}",
                            json={"jobTitle": f"churn {uuid.uuid4().hex[:6]}", "businessPhones": phones})
            edited += 1
        target += 1
    return {"users_renamed": renamed, "contacts_edited": edited, "events_added": added}


# ----------------------------------------------------------------------------- naive baseline


def naive_pass(graph_emu: Emulator, pbx_emu: Emulator, sample: list[dict[str, Any]]) -> dict[str, Any]:
    """A straightforward client: sequential requests, no ``$batch``, no delta, GET-then-PATCH per record.

    For each sampled user it reads the user, their contact folders and every folder's contacts (paged),
    their calendar view and automatic replies; then for each of their contacts it looks the phonebook
    entry up by name (``$filter=FirstName eq .. and LastName eq ..``) and PATCHes it when a field
    differs; and it looks the user's extension up by e-mail and PATCHes it when a name differs.
    The same token handling as the product.
    """
    from m365_3cx.staging.contacts import GRAPH_CONTACT_SELECT
    from m365_3cx.threecx.client import odata_quote

    g = graph_emu.info
    session = requests.Session()
    ca = g["ca_bundle"]
    token = session.post(f"{g['authority']}/oauth2/v2.0/token", data={
        "client_id": g["client_id"], "client_secret": g["client_secret"], "grant_type": "client_credentials",
        "scope": f"{g['graph_url']}/.default"}, verify=ca, timeout=60).json()["access_token"]
    gh = {"Authorization": f"Bearer {token}", "Prefer": 'IdType="ImmutableId"'}
    p = pbx_emu.info
    pbx_token = session.post(f"{p['base_url']}/connect/token", data={
        "client_id": p["client_id"], "client_secret": p["client_secret"], "grant_type": "client_credentials"},
        verify=p["ca_bundle"], timeout=60).json()["access_token"]
    ph = {"Authorization": f"Bearer {pbx_token}"}
    api = f"{p['base_url']}/xapi/v1"
    start = datetime.now(UTC) - timedelta(days=1)
    window = f"startDateTime={start:%Y-%m-%dT%H:%M:%SZ}&endDateTime={start + timedelta(days=8):%Y-%m-%dT%H:%M:%SZ}"
    requests_sent = patches = 0

    def get(url: str, headers: dict[str, str], verify: str) -> dict[str, Any] | None:
        nonlocal requests_sent
        requests_sent += 1
        response = session.get(url, headers=headers, verify=verify, timeout=60)
        return response.json() if response.ok else None

    def pages(url: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            body = get(next_url, gh, ca) or {}
            items.extend(body.get("value") or [])
            next_url = body.get("@odata.nextLink")
        return items

    started = time.perf_counter()
    select = ",".join(GRAPH_CONTACT_SELECT)
    for user in sample:
        base = f"{g['graph_url']}/v1.0/users/{user['id']}"
        get(f"{base}?$select=id,displayName,givenName,surname,mail", gh, ca)
        contacts = pages(f"{base}/contacts?$select={select}&$top=100")
        for folder in pages(f"{base}/contactFolders?$select=id,displayName"):
            contacts += pages(f"{base}/contactFolders/{folder['id']}/contacts?$select={select}&$top=100")
        pages(f"{base}/calendarView?{window}&$select=id,start,end,showAs,isAllDay&$top=100")
        get(f"{base}/mailboxSettings/automaticRepliesSetting", gh, ca)
        if user.get("mail"):
            found = (get(f"{api}/Users?$filter=EmailAddress eq {odata_quote(user['mail'])}&$select=Id,FirstName,"
                         f"LastName", ph, p["ca_bundle"]) or {}).get("value") or []
            del found
        for contact in contacts:
            key_filter = (f"FirstName eq {odata_quote(contact.get('givenName') or '')} and "
                          f"LastName eq {odata_quote(contact.get('surname') or '')}")
            entries = (get(f"{api}/Contacts?$filter={key_filter}&$top=1", ph, p["ca_bundle"]) or {}).get("value") or []
            entry = entries[0] if entries else None
            if entry is not None and entry.get("FirstName") != contact.get("givenName"):
                patches += 1  # a PATCH would go here; the no-change pass has nothing to write
    elapsed = time.perf_counter() - started
    session.close()
    return {"users": len(sample), "wall": elapsed, "requests": requests_sent, "patches_needed": patches}


# ----------------------------------------------------------------------------- main


def pg_database(url: str | None) -> tuple[str, Callable[[], None]]:
    if url:
        return url, lambda: None
    name = f"bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", drop


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--contacts", type=int, default=25, help="contacts per mailbox")
    parser.add_argument("--events", type=int, default=10, help="events per mailbox")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every emulator request")
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--graph-slots", type=int, default=4, help="parallel mapped tasks (graph_api pool)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="contacts.shard_size and presence.shard_size (users per mapped task instance)")
    parser.add_argument("--mapped-in", choices=("processes", "threads"), default="processes",
                        help="run mapped task instances in forked processes (as Airflow does) or threads")
    parser.add_argument("--write-concurrency", type=int, default=None, help="threecx.write_concurrency")
    parser.add_argument("--batch-concurrency", type=int, default=None, help="graph.batch_concurrency")
    parser.add_argument("--read-concurrency", type=int, default=None, help="threecx.read_concurrency")
    parser.add_argument("--naive-users", type=int, default=50, help="users the naive baseline samples (0: skip)")
    parser.add_argument("--staging", default=None, help="SQLAlchemy URL (default: a throwaway PostgreSQL database)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "bench_reference.json"))
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset (in order)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-ref-"))
    started_load = _loadavg()
    print(f"tenant: {args.users} users x {args.contacts} contacts x {args.events} events; latency "
          f"{args.latency_ms:g} ms; load average {started_load}; cpus {os.cpu_count()}", flush=True)
    seed_started = time.perf_counter()
    graph_emu = start_emulator("graph", "emulators.graph", [
        "--users", str(args.users), "--contacts-per-user", str(args.contacts), "--events-per-user", str(args.events),
        "--seed", "42"], tmp / "tls", tmp)
    pbx_emu = start_emulator("threecx", "emulators.threecx", ["--seed", "7"], tmp / "tls", tmp)
    print(f"emulators up in {time.perf_counter() - seed_started:.1f} s", flush=True)
    url, drop_db = pg_database(args.staging)
    engine = make_engine(url)
    sampler = RssSampler([graph_emu.proc.pid, pbx_emu.proc.pid]).start()
    report: dict[str, Any] = {"tenant": {"users": args.users, "contacts_per_mailbox": args.contacts,
                                         "events_per_mailbox": args.events, "latency_ms": args.latency_ms},
                              "machine": {"cpus": os.cpu_count(), "load_before": started_load},
                              "staging": engine.url.get_backend_name(), "modes": {}}
    try:
        create_schema(engine)
        with engine.begin() as conn:  # a fresh install is not live: go live, as the go-live DAG would
            set_writes_enabled(conn, True, changed_by="bench_reference.py", now=datetime.now(UTC),
                               note="benchmark")
        for emu in (graph_emu, pbx_emu):
            if args.latency_ms > 0:
                emu.admin("POST", "faults", json={"kind": "latency", "latency": args.latency_ms / 1000.0})
        raw: dict[str, Any] = {
            "numbering": {"policy": "attribute", "fallback_to_pool": True, "pool_first": "10000",
                          "pool_last": "39999"},
            "contacts": {"personal_contacts": "all"},
            "presence": {"enabled": True},
        }
        if args.shard_size is not None:
            raw["contacts"]["shard_size"] = raw["presence"]["shard_size"] = args.shard_size
        raw["threecx"] = {k: v for k, v in (("write_concurrency", args.write_concurrency),
                                             ("read_concurrency", args.read_concurrency)) if v is not None}
        if args.batch_concurrency is not None:
            raw["graph"] = {"batch_concurrency": args.batch_concurrency}
        settings = Settings.from_mapping(raw)
        write_concurrency = settings.threecx.write_concurrency
        batch_concurrency = settings.graph.batch_concurrency
        report["write_concurrency"] = write_concurrency
        report["batch_concurrency"] = batch_concurrency
        report["read_concurrency"] = settings.threecx.read_concurrency
        report["mapped_in"] = args.mapped_in
        h = Harness(engine, SqlCounter(engine), graph_emu.info, pbx_emu.info, settings, args.graph_slots,
                    args.mapped_in)
        facts: dict[str, Any] = {}
        before_census: dict[str, int] = {}
        for mode_name in [m for m in args.modes.split(",") if m]:
            mode = "full" if mode_name.endswith("full") else "delta"
            if mode_name == "delta_churn":
                facts = churn(graph_emu, args.churn, seed=11)
                print(f"churn: {facts}", flush=True)
            clear_token_cache()
            g0, p0 = graph_emu.counters(), pbx_emu.counters()
            h.steps = []
            sampler.reset()
            cpu_before = {"product": cpu_seconds(os.getpid(), reaped_children=True),
                          "graph_emulator": cpu_seconds(graph_emu.proc.pid),
                          "threecx_emulator": cpu_seconds(pbx_emu.proc.pid)}
            started = time.perf_counter()
            applied = run_pipeline(h, mode, mode_name)
            wall = time.perf_counter() - started
            cpu = {"product": cpu_seconds(os.getpid(), reaped_children=True),
                   "graph_emulator": cpu_seconds(graph_emu.proc.pid),
                   "threecx_emulator": cpu_seconds(pbx_emu.proc.pid)}
            cpu = {k: round(v - cpu_before[k], 1) for k, v in cpu.items()}
            g_req, p_req = diff(graph_emu.counters(), g0), diff(pbx_emu.counters(), p0)
            c = census(engine)
            report["census"] = c
            writes = sum(v for k, v in p_req.items() if k.startswith(WRITE_PREFIXES) and "/connect/" not in k)
            reads = sum(v for k, v in p_req.items() if k.startswith("GET "))
            changes = real_changes(applied)
            clients = graph_clients(h.steps)
            users_changed = int(facts.get("users_renamed", 0)) if mode_name == "delta_churn" else 0
            phonebook = applied.get("phonebook") or {}
            entries_updated = int(phonebook.get("updated") or 0) + int(phonebook.get("verified") or 0)
            g_wire = graph_wire(g_req, batched=True)
            g_min = graph_minimum(c, mode_name, users_changed, clients)
            decided = sum(int(_step_facts(st).get("decided", 0)) for st in h.steps)
            p_min = pbx_minimum_reads(before_census, c, mode_name, users_changed, entries_updated, decided)
            before_census = c
            lat = args.latency_ms / 1000.0
            floor = (graph_floor(g_min, c, mode_name, clients, lat, args.graph_slots, batch_concurrency)
                     + p_min * lat + changes * lat / write_concurrency)
            entry = {
                "wall_s": round(wall, 2),
                "steps": [{"step": s.name, "wall_s": round(s.wall, 2), "sql": s.sql,
                           "peak_rss_mib": mib(s.peak_kib), **_step_facts(s)} for s in h.steps],
                "sql_total": sum(s.sql for s in h.steps),
                "graph": {"wire": g_wire["total"], "inner_batch_items": g_wire["inner_batch_items"],
                          "minimum": g_min, "ratio": round(g_wire["total"] / max(1, g_min), 3),
                          "by_endpoint": g_req},
                "threecx": {"reads": reads, "reads_minimum": p_min, "writes": writes, "real_changes": changes,
                            "by_endpoint": p_req},
                "applied": applied,
                "latency_floor_s": round(floor, 2),
                "cpu_s": cpu,
                "ratio_to_floor": round(wall / max(floor, 1e-9), 2),
                "peak_rss_product_mib": mib(max((st.peak_kib for st in h.steps), default=0)),
                "peak_rss_tree_mib": mib(sampler.peak_tree_kib),
                "load_after": _loadavg(),
            }
            if mode_name == "initial_full":
                target = 1.5 * (writes * lat / write_concurrency) + graph_floor(
                    g_min, c, mode_name, clients, lat, args.graph_slots, batch_concurrency)
                entry["target_initial_s"] = round(target, 1)
            if facts and mode_name == "delta_churn":
                entry["churn"] = facts
            report["modes"][mode_name] = entry
            print_mode(mode_name, entry)
            _write(args.json, report)  # after every mode: a long run that is cut short keeps what it measured
        if args.naive_users > 0:
            users = [u for u in graph_emu.admin("GET", "state")["users"] if u.get("mail")]
            sample = random.Random(5).sample(users, min(len(users), args.naive_users))
            clear_token_cache()
            naive = naive_pass(graph_emu, pbx_emu, sample)
            scale = len(users) / max(1, len(sample))
            naive["scaled_wall_s"] = round(naive["wall"] * scale, 1)
            naive["scaled_requests"] = int(naive["requests"] * scale)
            best = report["modes"].get("repeat_full", {}).get("wall_s")
            if best:
                naive["speedup_vs_repeat_full"] = round(naive["scaled_wall_s"] / best, 1)
            delta = report["modes"].get("delta_none", {}).get("wall_s")
            if delta:
                naive["speedup_vs_delta_none"] = round(naive["scaled_wall_s"] / delta, 1)
            report["naive"] = naive
            print(f"naive baseline ({len(sample)} of {len(users)} mailbox users, scaled x{scale:.1f}): "
                  f"{naive['scaled_wall_s']} s, {naive['scaled_requests']} requests; "
                  f"speed-up repeat full x{naive.get('speedup_vs_repeat_full')}, "
                  f"delta x{naive.get('speedup_vs_delta_none')}", flush=True)
        report["machine"]["load_after"] = _loadavg()
    finally:
        sampler.stop()
        engine.dispose()
        graph_emu.stop()
        pbx_emu.stop()
        drop_db()
    print(f"written: {_write(args.json, report)}")
    return 0


def _write(path: str, report: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return out


def print_mode(name: str, e: dict[str, Any]) -> None:
    g, p = e["graph"], e["threecx"]
    print(f"\n== {name}: {e['wall_s']} s (floor {e['latency_floor_s']} s, x{e['ratio_to_floor']}); "
          f"SQL {e['sql_total']}; RSS product {e['peak_rss_product_mib']} MiB, tree {e['peak_rss_tree_mib']} MiB")
    print(f"   graph {g['wire']} requests ({g['inner_batch_items']} batch items), minimum {g['minimum']} "
          f"(x{g['ratio']}); 3CX reads {p['reads']} (minimum {p['reads_minimum']}), writes {p['writes']} "
          f"for {p['real_changes']} real changes")
    cpu = e.get("cpu_s") or {}
    print(f"   CPU: product {cpu.get('product')} s, Graph emulator {cpu.get('graph_emulator')} s, "
          f"3CX emulator {cpu.get('threecx_emulator')} s (on {os.cpu_count()} cores)")
    for s in e["steps"]:
        facts = "".join(f"  {k}={s[k]}" for k in ("decided", "scope") if k in s)
        print(f"   {s['step']:<28} {s['wall_s']:8.2f} s  {s['sql']:7d} SQL  {s.get('peak_rss_mib', 0):7.0f} MiB{facts}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
