"""A throwaway Airflow for the push feature: scheduler, triggerer, dag-processor and an HTTPS api-server.

What the event-driven path needs and nothing more (so it stays light on a 2-core machine):
``LocalExecutor`` on a fresh PostgreSQL metadata database, a fresh staging database, the Graph
and 3CX emulators, and ``airflow api-server --ssl-cert/--ssl-key`` with a certificate of the Graph
emulator's CA (``emulators/common/tls.py``), so the emulator can post change notifications to the
receiver plugin (``/m365-3cx-graph/...``) over HTTPS the way Graph posts to a public URL. Task
processes reach the execution API over the same HTTPS listener (``[api] ssl_cert`` as their CA).

Every DAG is created paused except ``m365_3cx_push``: nothing timed runs, so whatever reaches 3CX
got there through a notification. Built on :mod:`celery_cluster` (processes, databases, teardown).

By hand::

    .venv/bin/python scripts/push_cluster.py      # start, print URLs, Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the emulators package lives in the checkout
    sys.path.insert(0, str(ROOT))


def _base() -> Any:
    name = "m365_3cx_celery_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "celery_cluster.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _base()
#: The only DAG unpaused: runs start from notifications alone.
PUSH_DAG = "m365_3cx_push"
RECEIVER_PREFIX = "/m365-3cx-graph"


@dataclass
class PushCluster(base.CeleryCluster):
    """The push cluster; ``settings`` is the settings Variable (``push`` is filled in with the receiver URLs).

    :param settings: the ``m365_3cx_settings`` document without its ``push`` section.
    :param extra_env: more environment for every Airflow process (e.g. ``M365_3CX_DELTA_MINUTES``).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    ca_bundle: str = field(default="", init=False)

    @property
    def notification_url(self) -> str:
        return f"{self.api_url}{RECEIVER_PREFIX}/notifications"

    @property
    def lifecycle_url(self) -> str:
        return f"{self.api_url}{RECEIVER_PREFIX}/lifecycle"

    def full_settings(self) -> dict[str, Any]:
        return {**self.settings, "push": {"enabled": True, "notification_url": self.notification_url,
                                          "lifecycle_url": self.lifecycle_url}}

    def start(self) -> None:
        """Databases, emulators, ``db migrate``, api-server (HTTPS), scheduler, triggerer, dag-processor."""
        import tempfile

        from emulators.common.tls import ensure_tls

        began = time.monotonic()
        self.home = Path(tempfile.mkdtemp(prefix=f"m365-3cx-push-{self.tag}-"))
        (self.home / "logs").mkdir()
        for name in (self.meta_db, self.staging_db):
            self._create_database(name)
        self._start_emulators()
        tls = ensure_tls(self.home / "tls-graph")  # the Graph emulator's own CA: it trusts this certificate
        self.ca_bundle = str(tls.ca_cert)
        self.env = self._airflow_env()
        port = self.env["AIRFLOW__API__PORT"]
        self.api_url = f"https://127.0.0.1:{port}"
        self.env.update({
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",  # asset-triggered runs need it; other DAGs stay paused
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__SSL_CERT": str(tls.server_cert),
            "AIRFLOW__API__SSL_KEY": str(tls.server_key),
            "AIRFLOW__API__SSL_CA_FILE": self.ca_bundle,
            "AIRFLOW__TRIGGERER__DEFAULT_CAPACITY": "50",
            "AIRFLOW_VAR_M365_3CX_SETTINGS": json.dumps(self.full_settings()),
            "M365_3CX_PUSH_POLL_SECONDS": "0.5",
            **self.extra_env,
        })
        self._run_cli("db-migrate", "db", "migrate")
        self.timings["migrate_done"] = time.monotonic() - began
        self._spawn("api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", port,
                                   "--ssl-cert", str(tls.server_cert), "--ssl-key", str(tls.server_key)])
        self._spawn("scheduler", ["airflow", "scheduler"])
        self._spawn("dag-processor", ["airflow", "dag-processor"])
        self._spawn("triggerer", ["airflow", "triggerer"])
        self._wait_healthy()
        self._create_pools()
        self._wait_push_dag()
        self.timings["ready"] = time.monotonic() - began

    # -- HTTPS towards the api-server (REQUESTS_CA_BUNDLE would override Session.verify) ---------------
    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        session = self._session if auth else requests
        response = session.request(method, f"{self.api_url}{path}", timeout=base.REQUEST_TIMEOUT,
                                   verify=self.ca_bundle, **kwargs)
        if response.status_code >= 400:
            raise base.ClusterError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:2000]}")
        return response

    def post_receiver(self, route: str, body: Any) -> requests.Response:
        """POST to the receiver anonymously, as Graph (or a forger) would."""
        return requests.post(f"{self.api_url}{RECEIVER_PREFIX}/{route}", json=body, timeout=30,
                             verify=self.ca_bundle)

    def _wait_healthy(self) -> None:
        def healthy() -> bool:
            body = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5, verify=self.ca_bundle).json()
            return all((body.get(key) or {}).get("status") == "healthy"
                       for key in ("metadatabase", "scheduler", "dag_processor", "triggerer"))

        self._until("the api-server, scheduler, dag-processor and triggerer to report healthy", healthy)
        token = self._request("POST", "/auth/token", auth=False,
                              json={"username": self.username, "password": self.password}).json()["access_token"]
        self._session.headers["Authorization"] = f"Bearer {token}"

    def _wait_push_dag(self) -> None:
        def parsed() -> bool:
            errors = self._request("GET", "/api/v2/importErrors").json().get("import_errors", [])
            if errors:
                raise self._fail("DAG import errors:\n" + "\n".join(
                    f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors))
            return self._session.get(f"{self.api_url}/api/v2/dags/{PUSH_DAG}", timeout=10,
                                     verify=self.ca_bundle).status_code == 200

        self._until(f"the DAG {PUSH_DAG} to be parsed", parsed)
        self._request("PATCH", f"/api/v2/dags/{PUSH_DAG}", json={"is_paused": False})

    def connections_env(self) -> dict[str, str]:
        """The connection and settings environment variables (for an in-process ``dag.test()`` setup)."""
        return {k: v for k, v in self.env.items() if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}


def main() -> int:
    settings = dict(base.SETTINGS, presence={"enabled": True})
    cluster = PushCluster(graph_users=20, settings=settings)
    with contextlib.ExitStack() as stack:
        cluster.start()
        stack.callback(cluster.stop)
        print(f"push cluster ready in {cluster.timings['ready']:.1f} s; home {cluster.home}")
        print(f"  Airflow UI/API  {cluster.api_url}  (user {cluster.username!r}, password {cluster.password!r})")
        print(f"  receiver        {cluster.notification_url}")
        with contextlib.suppress(KeyboardInterrupt):
            while all(c.alive() for c in cluster.components):
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
