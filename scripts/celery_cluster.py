"""A throwaway, real distributed Airflow cluster: CeleryExecutor, Redis broker, PostgreSQL.

Starts, on this machine, everything a production deployment of the sync runs on
separate hosts, wired only through the network and the databases:

* a fresh PostgreSQL metadata database (also the Celery result backend) and a fresh
  staging database, both with unique names and dropped at teardown;
* the Graph and 3CX emulators (HTTPS, throwaway CAs) as subprocesses;
* ``airflow api-server`` (127.0.0.1, free port), ``airflow scheduler``,
  ``airflow dag-processor`` and two ``airflow celery worker`` processes
  (``--celery-hostname w1@%h`` / ``w2@%h``) on a Redis database and a queue name of
  their own, so messages of other runs cannot reach them.

Each worker gets its own ``AIRFLOW_HOME``, working directory and ``TMPDIR`` and
reports itself as ``w1@<host>`` / ``w2@<host>`` through ``[core] hostname_callable``
(what two real machines would report as their host names), so a task that leaves a
local file for a later task breaks as soon as the two land on different workers, and
the task instances' ``hostname`` (REST API) shows which worker ran them. Only the
task log folder is shared, as remote logging would be, so the UI can show logs.

By hand (Redis and PostgreSQL must be running)::

    .venv/bin/python scripts/celery_cluster.py                 # start, print URLs, Ctrl-C stops
    .venv/bin/python scripts/celery_cluster.py --trigger m365_3cx_full_sync --trigger m365_3cx_delta --exit

From tests: ``with CeleryCluster() as cluster: run_id = cluster.trigger(dag_id)``.
Everything (processes, process groups, databases, Redis keys, the home) is removed on
exit, also when startup fails; a startup failure raises :class:`ClusterError` with the
tails of the component logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import requests

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DAG_IDS = ("m365_3cx_full_sync", "m365_3cx_delta", "m365_3cx_go_live")

PG_ADMIN_URL = os.environ.get("M365_3CX_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("M365_3CX_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("M365_3CX_CLUSTER_REDIS_DB", "5"))

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "guards": {"mass_removal_min": 5, "mass_removal_fraction": 0.10},
    # Small shards, so the 40 emulated users give ~7 mapped extract_contacts instances: more than one
    # worker holds at once (concurrency 2) even when a fast worker takes the next shard as it frees up.
    "contacts": {"personal_contacts": "all", "shard_size": 5},
}
POOLS = {"graph_api": (4, "Microsoft Graph requests"), "threecx_api": (1, "3CX XAPI (one live token per client)")}

# Loaded by every Airflow process through PYTHONPATH and [core] hostname_callable.
_HOSTNAME_MODULE = '''"""hostname_callable of the throwaway cluster: a worker reports its node name."""
import os
import socket


def hostname() -> str:
    node = os.environ.get("M365_3CX_CLUSTER_NODE")
    return f"{node}@{socket.getfqdn()}" if node else socket.getfqdn()
'''

TERMINAL_RUN_STATES = {"success", "failed"}
REQUEST_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The cluster (or one of its components) did not start or a run did not finish."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies (Linux), so nothing outlives a killed test."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Component:
    """One started process: its name, ``Popen`` and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class CeleryCluster:
    """Start the whole cluster on ``__enter__``; tear everything down on ``__exit__``.

    :param graph_users: users in the emulated tenant.
    :param concurrency: Celery worker concurrency (each of the two workers).
    :param keep_home: keep the home folder (logs) after teardown, for inspection.
    """

    graph_users: int = 40
    concurrency: int = 2
    keep_home: bool = False
    startup_timeout: float = 180.0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    home: Path = field(init=False)
    components: list[Component] = field(default_factory=list, init=False)
    databases: list[str] = field(default_factory=list, init=False)
    graph: dict[str, Any] = field(default_factory=dict, init=False)
    threecx: dict[str, Any] = field(default_factory=dict, init=False)
    api_url: str = field(default="", init=False)
    env: dict[str, str] = field(default_factory=dict, init=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)
    _session: requests.Session = field(default_factory=requests.Session, init=False)
    _password: str = field(default_factory=lambda: secrets.token_urlsafe(16), init=False)

    # -- names -------------------------------------------------------------------------------------------
    @property
    def meta_db(self) -> str:
        return f"m365_3cx_cluster_meta_{self.tag}"

    @property
    def staging_db(self) -> str:
        return f"m365_3cx_cluster_stg_{self.tag}"

    @property
    def queue(self) -> str:
        return f"m365_3cx_cluster_{self.tag}"

    @property
    def username(self) -> str:
        return "ops"

    @property
    def password(self) -> str:
        return self._password

    def _pg_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        return driver + base[base.index("://"):] + f"/{database}"

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> CeleryCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Databases, emulators, ``db migrate``, then all Airflow components; wait until ready."""
        began = time.monotonic()
        self.home = Path(tempfile.mkdtemp(prefix=f"m365-3cx-cluster-{self.tag}-"))
        (self.home / "logs").mkdir()
        self._check_services()
        for name in (self.meta_db, self.staging_db):
            self._create_database(name)
        self._start_emulators()
        self.env = self._airflow_env()
        self._run_cli("db-migrate", "db", "migrate")
        self.timings["migrate_done"] = time.monotonic() - began

        api_port = int(self.env["AIRFLOW__API__PORT"])
        self._spawn("api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(api_port)])
        self._spawn("scheduler", ["airflow", "scheduler"])
        self._spawn("dag-processor", ["airflow", "dag-processor"])
        for node in ("w1", "w2"):
            self._spawn(f"worker-{node}", [
                "airflow", "celery", "worker", "--celery-hostname", f"{node}@%h", "--concurrency",
                str(self.concurrency), "--queues", self.queue, "--skip-serve-logs", "--without-mingle",
                "--without-gossip",
            ], node=node)
        self._wait_healthy()
        self._create_pools()
        self._wait_workers_ready()
        self._wait_dags_parsed()
        self.timings["ready"] = time.monotonic() - began

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL; whole process groups), drop databases, delete home."""
        self._stop_processes()
        for name in list(self.databases):
            try:
                self._drop_database(name)
                self.databases.remove(name)
            except Exception as exc:
                print(f"celery_cluster: could not drop database {name}: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            self._clean_redis()
        self._session.close()
        if getattr(self, "home", None) and not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- services ----------------------------------------------------------------------------------------
    def _check_services(self) -> None:
        import importlib.util

        import redis
        import sqlalchemy as sa

        for module, why in (("asyncpg", "Airflow 3.3 opens its PostgreSQL metadata DB with it (async engine)"),
                            ("psycopg2", "the sync engine and the Celery result backend use it"),
                            ("celery", "the CeleryExecutor"), ("redis", "the Celery broker transport")):
            if importlib.util.find_spec(module) is None:
                raise ClusterError(f"Python package {module!r} is not installed in {sys.prefix}: {why}; "
                                   "it must be in requirements.txt")

        try:
            redis.Redis.from_url(f"{REDIS_URL}/{REDIS_DB}", socket_timeout=5).ping()
        except Exception as exc:
            raise ClusterError(f"Redis at {REDIS_URL} is not reachable: {exc}") from exc
        engine = sa.create_engine(PG_ADMIN_URL)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            raise ClusterError(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}") from exc
        finally:
            engine.dispose()

    def _create_database(self, name: str) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            self.databases.append(name)
        finally:
            admin.dispose()

    def _drop_database(self, name: str) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        finally:
            admin.dispose()

    def _clean_redis(self) -> None:
        """Delete this run's queue and bindings from the Redis database (other runs' keys stay)."""
        import redis

        client = redis.Redis.from_url(f"{REDIS_URL}/{REDIS_DB}", socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"*{self.queue}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    # -- emulators ---------------------------------------------------------------------------------------
    def _start_emulators(self) -> None:
        graph = self._start_emulator("graph-emulator", "emulators.graph", [
            "--port", "0", "--tls-dir", str(self.home / "tls-graph"), "--seed", "42",
            "--users", str(self.graph_users)])
        threecx = self._start_emulator("threecx-emulator", "emulators.threecx", [
            "--port", "0", "--tls-dir", str(self.home / "tls-threecx"), "--seed", "7"])
        self.graph = self._read_start_line(graph)
        self.threecx = self._read_start_line(threecx)

    def _start_emulator(self, name: str, module: str, args: list[str]) -> Component:
        log = self.home / f"{name}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=err, start_new_session=True, preexec_fn=_die_with_parent)
        component = Component(name, proc, log)
        self.components.append(component)
        return component

    def _read_start_line(self, component: Component, timeout: float = 60.0) -> dict[str, Any]:
        """The emulator's JSON start line; its further stdout is copied to its log file."""
        stdout: IO[bytes] = component.proc.stdout  # type: ignore[assignment]
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise ClusterError(f"{component.name} printed no start line in {timeout:.0f} s\n"
                                   f"{tail(component.log)}")
        line = stdout.readline()
        if not line:
            raise ClusterError(f"{component.name} exited (code {component.proc.poll()})\n{tail(component.log)}")

        def drain() -> None:
            with open(component.log, "ab") as out:
                for chunk in iter(stdout.readline, b""):
                    out.write(chunk)
                    out.flush()

        threading.Thread(target=drain, name=f"{component.name}-stdout", daemon=True).start()
        return json.loads(line)

    def graph_admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the Graph emulator's ``/_emulator/<path>``; return the JSON body (or None)."""
        return self._emulator_admin(self.graph["graph_url"], self.graph["ca_bundle"], method, path, **kwargs)

    def threecx_admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the 3CX emulator's ``/_emulator/<path>``; return the JSON body (or None)."""
        return self._emulator_admin(self.threecx["base_url"], self.threecx["ca_bundle"], method, path, **kwargs)

    @staticmethod
    def _emulator_admin(base_url: str, ca_bundle: str, method: str, path: str, **kwargs: Any) -> Any:
        url = base_url.rstrip("/") + "/_emulator/" + path.lstrip("/")
        response = requests.request(method, url, verify=ca_bundle, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    # -- Airflow -----------------------------------------------------------------------------------------
    def _airflow_env(self) -> dict[str, str]:
        pylib = self.home / "pylib"
        pylib.mkdir()
        (pylib / "m365_3cx_cluster_host.py").write_text(_HOSTNAME_MODULE)
        (self.home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        api_port = free_port()
        meta = self._pg_url(self.meta_db)
        from urllib.parse import urlsplit

        staging = urlsplit(self._pg_url(self.staging_db))
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "M365_3CX_"))}
        env.update({
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(pylib), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "m365_3cx_cluster_host.hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
            "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{REDIS_DB}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self._pg_url(self.meta_db),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            # Airflow's defaults, pinned: a worker holds at most `concurrency` unacknowledged tasks, so when
            # more tasks are queued at once than one worker can hold, the other worker must take some.
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs" / "tasks"),
            # Manual (REST) runs only: the cron/delta timetables must not start runs of their own.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW_CONN_M365_GRAPH": json.dumps({
                "conn_type": "m365_graph", "login": self.graph["client_id"], "password": self.graph["client_secret"],
                "extra": {"tenant_id": self.graph["tenant_id"], "authority": self.graph["authority"].rsplit("/", 1)[0],
                          "base_url": self.graph["graph_url"], "ca_bundle": self.graph["ca_bundle"]},
            }),
            "AIRFLOW_CONN_THREECX_XAPI": json.dumps({
                "conn_type": "threecx_xapi", "host": self.threecx["base_url"], "login": self.threecx["client_id"],
                "password": self.threecx["client_secret"], "extra": {"ca_bundle": self.threecx["ca_bundle"]},
            }),
            "AIRFLOW_CONN_M365_3CX_STAGING": json.dumps({
                "conn_type": "postgres", "host": staging.hostname, "port": staging.port or 5432,
                "login": staging.username, "password": staging.password, "schema": self.staging_db,
            }),
            "AIRFLOW_VAR_M365_3CX_SETTINGS": json.dumps(SETTINGS),
        })
        return env

    def _node_env(self, node: str | None) -> tuple[dict[str, str], Path]:
        """The shared environment; a worker node also gets its own home, working directory and TMPDIR."""
        if node is None:
            return self.env, ROOT
        base = self.home / node
        for sub in ("airflow", "cwd", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        env = dict(self.env, AIRFLOW_HOME=str(base / "airflow"), TMPDIR=str(base / "tmp"),
                   M365_3CX_CLUSTER_NODE=node)
        return env, base / "cwd"

    def _run_cli(self, name: str, *args: str, timeout: float = 300.0) -> None:
        log = self.home / f"{name}.log"
        with open(log, "wb") as out:
            result = subprocess.run([str(VENV_BIN / "airflow"), *args], env=self.env, cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout, check=False)
        if result.returncode != 0:
            raise ClusterError(f"airflow {' '.join(args)} failed (exit {result.returncode})\n{tail(log)}")

    def _spawn(self, name: str, argv: list[str], node: str | None = None) -> None:
        env, cwd = self._node_env(node)
        log = self.home / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(VENV_BIN / argv[0]), *argv[1:]], env=env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        self.components.append(Component(name, proc, log))

    def logs_report(self, lines: int = 30) -> str:
        """The tails of every component log (for failure messages)."""
        parts = []
        for comp in self.components:
            state = "running" if comp.alive() else f"exited {comp.proc.returncode}"
            parts.append(f"----- {comp.name} ({state}) {comp.log} -----\n{tail(comp.log, lines)}")
        return "\n".join(parts)

    def _fail(self, message: str) -> ClusterError:
        return ClusterError(f"{message}\n{self.logs_report()}")

    def _check_alive(self) -> None:
        dead = [c.name for c in self.components if not c.alive()]
        if dead:
            raise self._fail(f"component(s) exited during startup: {', '.join(dead)}")

    def _until(self, what: str, probe: Any, timeout: float | None = None, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                result = probe()
            except (requests.RequestException, ValueError) as exc:
                result, last = None, exc
            if result:
                return result
            time.sleep(interval)
        raise self._fail(f"timed out waiting for {what} (last error: {last!r})")

    def _wait_healthy(self) -> None:
        self.api_url = f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}"

        def healthy() -> bool:
            body = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
            return all((body.get(key) or {}).get("status") == "healthy"
                       for key in ("metadatabase", "scheduler", "dag_processor"))

        self._until("the api-server, scheduler and dag-processor to report healthy", healthy)
        token = self._request("POST", "/auth/token", auth=False,
                              json={"username": self.username, "password": self.password}).json()["access_token"]
        self._session.headers["Authorization"] = f"Bearer {token}"

    def _wait_workers_ready(self) -> None:
        def ready() -> bool:
            return all(" ready." in c.log.read_text(errors="replace") for c in self.components
                       if c.name.startswith("worker-"))

        self._until("both Celery workers to be ready", ready)

    def _create_pools(self) -> None:
        for name, (slots, description) in POOLS.items():
            self._request("POST", "/api/v2/pools",
                          json={"name": name, "slots": slots, "description": description, "include_deferred": False})

    def _wait_dags_parsed(self) -> None:
        def parsed() -> bool:
            errors = self._request("GET", "/api/v2/importErrors").json().get("import_errors", [])
            if errors:
                raise self._fail("DAG import errors:\n" + "\n".join(
                    f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors))
            return all(self._session.get(f"{self.api_url}/api/v2/dags/{d}", timeout=10).status_code == 200
                       for d in DAG_IDS)

        self._until(f"the DAGs {', '.join(DAG_IDS)} to be parsed", parsed)
        for dag_id in DAG_IDS:
            self._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    # -- REST client -------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        session = self._session if auth else requests
        # generous: on a loaded 2-core machine the single api-server worker also serves every task's
        # execution-API calls, and a status read can take longer than 30 s
        response = session.request(method, f"{self.api_url}{path}", timeout=REQUEST_TIMEOUT, **kwargs)
        if response.status_code >= 400:
            raise ClusterError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:2000]}")
        return response

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run through the REST API (like an ops tool would); return its run id."""
        body = {"logical_date": None, "conf": conf or {}}
        return str(self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body).json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"])

    def wait(self, dag_id: str, run_id: str, timeout: float = 240.0) -> str:
        """Wait until the run is finished; return its final state (``success``/``failed``)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            try:
                state = self.run_state(dag_id, run_id)
            except requests.Timeout:  # a slow api-server is not a failed run: ask again
                continue
            if state in TERMINAL_RUN_STATES:
                return state
            dead = [c.name for c in self.components if not c.alive()]
            if dead:
                raise self._fail(f"component(s) died while {dag_id} {run_id} was {state}: {', '.join(dead)}")
            time.sleep(1.0)
        raise self._fail(f"{dag_id} {run_id} still {state!r} after {timeout:.0f} s\n"
                         f"{self.format_table(self.task_instances(dag_id, run_id))}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones included), with ``hostname`` and ``state``."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                                 params={"limit": 100, "offset": len(items)}).json()
            items.extend(page["task_instances"])
            if not page["task_instances"] or len(items) >= page["total_entries"]:
                break
        return sorted(items, key=lambda ti: (ti.get("start_date") or "~", ti["task_id"], ti.get("map_index", -1)))

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """A task instance try's log text (for failure messages)."""
        response = self._session.get(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": True}, headers={"Accept": "text/plain"}, timeout=30)
        return response.text

    def airflow(self, name: str, *args: str, timeout: float = 300.0) -> str:
        """Run an ``airflow`` CLI command against the cluster (e.g. ``backfill create``); return its output."""
        self._run_cli(name, *args, timeout=timeout)
        return (self.home / f"{name}.log").read_text(errors="replace")

    def runs(self, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
        """The DAG's runs (newest first), optionally of one ``run_type`` (``manual``, ``backfill``, ``scheduled``)."""
        params: dict[str, Any] = {"limit": 100, "order_by": "-run_after"}
        if run_type:
            params["run_type"] = [run_type]
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params).json()["dag_runs"]

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's backfills (``GET /api/v2/backfills``); ``completed_at`` is set by the scheduler every 30 s."""
        return self._request("GET", "/api/v2/backfills", params={"dag_id": dag_id, "limit": 100}).json()["backfills"]

    def hitl_details(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's Human-in-the-loop requests (``GET .../hitlDetails``)."""
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails").json()["hitl_details"]

    def wait_for_hitl(self, dag_id: str, run_id: str, task_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Wait until ``task_id`` of the run waits for input; return its HITL detail."""
        def parked() -> dict[str, Any] | None:
            if self.run_state(dag_id, run_id) in TERMINAL_RUN_STATES:
                raise self._fail(f"{dag_id} {run_id} finished without asking for {task_id}\n"
                                 f"{self.format_table(self.task_instances(dag_id, run_id))}")
            return next((d for d in self.hitl_details(dag_id, run_id)
                         if d["task_instance"]["task_id"] == task_id
                         and d["task_instance"]["state"] == "awaiting_input"), None)

        return self._until(f"{dag_id} {run_id} {task_id} to wait for input", parked, timeout=timeout)

    def answer_hitl(self, dag_id: str, run_id: str, task_id: str, option: str, map_index: int = -1) -> dict[str, Any]:
        """Answer a HITL request as the cluster's user (``PATCH .../hitlDetails``, what "Required actions" sends)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"
        return self._request("PATCH", path, json={"chosen_options": [option], "params_input": {}}).json()

    def celery_workers_of(self, ti_id: str) -> list[str]:
        """Which worker(s) logged ``Executing workload in Celery`` for this task instance id (Celery's own view)."""
        needle = f"id=UUID('{ti_id}')"
        found = []
        for comp in self.components:
            if comp.name.startswith("worker-"):
                text = comp.log.read_text(errors="replace")
                if any(needle in line for line in text.splitlines() if "Executing workload in Celery" in line):
                    found.append(comp.name.removeprefix("worker-"))
        return found

    @staticmethod
    def format_table(tis: list[dict[str, Any]]) -> str:
        """Task instances as a fixed-width table: task_id, map_index (shard label), hostname, state, try."""
        def index(ti: dict[str, Any]) -> str:
            label = ti.get("rendered_map_index")
            map_index = str(ti.get("map_index", -1))
            return f"{map_index} ({label})" if label and label != map_index else map_index

        rows = [("task_id", "map_index", "hostname", "state", "try")]
        rows += [(ti["task_id"], index(ti), ti.get("hostname") or "-", str(ti.get("state")), str(ti.get("try_number")))
                 for ti in tis]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)

    # -- teardown ----------------------------------------------------------------------------------------
    def _stop_processes(self, grace: float = 20.0) -> None:
        import psutil

        tracked: dict[int, psutil.Process] = {}
        for comp in self.components:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(comp.proc.pid)
                for proc in [parent, *parent.children(recursive=True)]:
                    tracked[proc.pid] = proc
        # Components first (graceful: Celery warm shutdown, scheduler stops its children), then stragglers.
        for comp in self.components:
            if comp.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(comp.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for comp in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(max(0.1, deadline - time.monotonic()))
        for comp in self.components:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(comp.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.proc.wait(5)
        for proc in tracked.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
        psutil.wait_procs(list(tracked.values()), timeout=5)
        self.components.clear()

    def leftovers(self) -> list[str]:
        """Processes still running from this cluster's home (should be empty after ``stop``)."""
        import psutil

        found = []
        marker = str(getattr(self, "home", "")) or "\0"
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            with contextlib.suppress(psutil.Error):
                env = proc.info.get("environ") or {}
                if marker in (env.get("AIRFLOW_HOME") or "") or marker in " ".join(proc.info.get("cmdline") or []):
                    found.append(f"{proc.pid} {' '.join(proc.info.get('cmdline') or [])}")
        return found


@contextlib.contextmanager
def celery_cluster(**kwargs: Any) -> Iterator[CeleryCluster]:
    """``with celery_cluster() as cluster:`` — the same as ``with CeleryCluster(**kwargs)``."""
    with CeleryCluster(**kwargs) as cluster:
        yield cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40, help="users in the emulated tenant")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery concurrency of each worker")
    parser.add_argument("--trigger", action="append", default=[], metavar="DAG_ID",
                        help="trigger this DAG through the REST API and wait for it (repeatable, in order)")
    parser.add_argument("--exit", action="store_true", help="tear down after the triggered runs instead of waiting")
    parser.add_argument("--keep-home", action="store_true", help="keep the home folder (logs) after teardown")
    args = parser.parse_args(argv)

    with CeleryCluster(graph_users=args.users, concurrency=args.concurrency, keep_home=args.keep_home) as cluster:
        print(f"cluster ready in {cluster.timings['ready']:.1f} s; home {cluster.home}")
        print(f"  Airflow UI/API  {cluster.api_url}  (user {cluster.username!r}, password {cluster.password!r})")
        print(f"  Graph emulator  {cluster.graph['graph_url']}")
        print(f"  3CX emulator    {cluster.threecx['base_url']}")
        print(f"  metadata DB {cluster.meta_db}, staging DB {cluster.staging_db}, queue {cluster.queue}")
        status = 0
        for dag_id in args.trigger:
            started = time.monotonic()
            run_id = cluster.trigger(dag_id)
            state = cluster.wait(dag_id, run_id)
            print(f"\n{dag_id} {run_id}: {state} in {time.monotonic() - started:.1f} s")
            print(cluster.format_table(cluster.task_instances(dag_id, run_id)))
            status = status or int(state != "success")
        if not args.exit:
            print("\nrunning; Ctrl-C tears everything down")
            with contextlib.suppress(KeyboardInterrupt):
                while all(c.alive() for c in cluster.components):
                    time.sleep(1)
                print(cluster.logs_report())
        return status


if __name__ == "__main__":
    sys.exit(main())
