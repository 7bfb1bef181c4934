"""The demo: both emulators, real Airflow (``airflow dags test``), SQLite staging.

1. starts the Graph and 3CX emulators (HTTPS, throwaway CA) and wires the Airflow
   connections to them through ``AIRFLOW_CONN_*`` environment variables;
2. runs ``m365_3cx_full_sync`` and shows what it created in 3CX;
3. runs it again and shows that the second run wrote nothing;
4. renames, disables and deletes users in the Graph emulator (and adds one), adds,
   edits and deletes an Outlook contact, runs ``m365_3cx_delta`` and shows what changed;
5. runs ``m365_3cx_hourly`` (calendars and automatic replies -> 3CX status), then gives
   one user a meeting now and turns on another's automatic replies: after a delta run
   they are ``Away`` and ``Out of office``; after the meeting is cancelled and the
   replies are turned off, the next delta run puts both back to ``Available``.

``--ui`` then keeps everything running under ``airflow standalone`` so the runs can
be inspected in the Airflow UI (http://127.0.0.1:8080).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
VENV_BIN = Path(sys.executable).parent


def start_emulator(module: str, args: list[str], log_name: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``python -m module`` and read its one JSON start line."""
    log = open(DEMO / log_name, "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{module} did not start; see {DEMO / log_name}")
    return proc, json.loads(line)


class Admin:
    """Tiny client for an emulator's /_emulator admin API."""

    def __init__(self, base_url: str, ca_bundle: str) -> None:
        self.base_url = base_url.rstrip("/") + "/_emulator"
        self.ca_bundle = ca_bundle

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.base_url}/{path.lstrip('/')}", verify=self.ca_bundle,
                                    timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None


def airflow_env(graph: dict[str, Any], threecx: dict[str, Any]) -> dict[str, str]:
    """Environment for Airflow: home, connections and the settings Variable."""
    env = os.environ.copy()
    # airflow standalone (--ui) starts its components as `airflow ...` subprocesses found on PATH.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({
        "AIRFLOW_HOME": str(DEMO / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        # INFO: the task logs in the UI show each step's summary and its first planned changes.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_M365_GRAPH": json.dumps({
            "conn_type": "m365_graph", "login": graph["client_id"], "password": graph["client_secret"],
            "extra": {"tenant_id": graph["tenant_id"], "authority": graph["authority"].rsplit("/", 1)[0],
                      "base_url": graph["graph_url"], "ca_bundle": graph["ca_bundle"]},
        }),
        "AIRFLOW_CONN_THREECX_XAPI": json.dumps({
            "conn_type": "threecx_xapi", "host": threecx["base_url"], "login": threecx["client_id"],
            "password": threecx["client_secret"], "extra": {"ca_bundle": threecx["ca_bundle"]},
        }),
        "AIRFLOW_CONN_M365_3CX_STAGING": json.dumps({"conn_type": "sqlite", "host": str(DEMO / "staging.db")}),
    })
    # The settings Variable is NOT an AIRFLOW_VAR_* environment variable: that would hide every
    # edit made in the UI. main() stores DEMO_SETTINGS in the metadata DB (`airflow variables set`).
    env.pop("AIRFLOW_VAR_M365_3CX_SETTINGS", None)
    return env


#: The demo's settings Variable, stored in Airflow's metadata DB (editable in the UI with --ui).
DEMO_SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 15},
    "presence": {"enabled": True, "mode": "respect", "shard_size": 15},
}


def airflow(env: dict[str, str], *args: str, quiet: bool = True) -> None:
    """Run the ``airflow`` CLI of this venv; show its output only when it fails."""
    result = subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, cwd=ROOT, text=True,
                            capture_output=quiet)
    if result.returncode != 0:
        if quiet:
            sys.stdout.write(result.stdout[-6000:])
            sys.stderr.write(result.stderr[-6000:])
        raise SystemExit(f"airflow {' '.join(args)} failed with exit code {result.returncode}")


def run_dag(env: dict[str, str], dag_id: str, conf: dict[str, Any] | None = None) -> str:
    print(f"\n==> airflow dags test {dag_id}")
    started = time.monotonic()
    args = ["dags", "test", dag_id]
    if conf:
        args += ["-c", json.dumps(conf)]
    airflow(env, *args)
    print(f"    finished in {time.monotonic() - started:.1f} s")
    return latest_run_key(dag_id)


def staging_query(sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{DEMO / 'staging.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params or {}))
    finally:
        engine.dispose()


def latest_run_key(dag_id: str) -> str:
    rows = staging_query("SELECT run_key FROM sync_runs WHERE dag_id = :d ORDER BY started_at DESC LIMIT 1",
                         {"d": dag_id})
    return rows[0][0] if rows else ""


def show_run(run_key: str) -> None:
    """Print the run's counts, its 3CX writes and per-record notes."""
    rows = staging_query("SELECT status, counts FROM sync_runs WHERE run_key = :k", {"k": run_key})
    writes = staging_query(
        "SELECT action, number, object_key, field, before, after, result FROM sync_audit "
        "WHERE run_key = :k ORDER BY id", {"k": run_key})
    ok_writes = sum(1 for w in writes if w[-1] == "ok")
    status, counts = rows[0] if rows else ("?", "{}")
    print(f"    run {run_key}: status={status} counts={counts}")
    print(f"    3CX writes recorded in sync_audit for this run: {ok_writes}")
    for action, number, _key, field, before, after, result in writes[:25]:
        detail = f"{field}: {before!r} -> {after!r}" if field else ""
        print(f"      {action:<7} ext {number:<5} {detail} [{result}]")
    if len(writes) > 25:
        print(f"    ... {len(writes) - 25} more audit rows")
    notes = staging_query("SELECT severity, message FROM sync_notes WHERE run_key = :k ORDER BY id LIMIT 8",
                          {"k": run_key})
    if notes:
        print("    per-record notes (first 8):")
        for severity, message in notes:
            print(f"      {severity}: {message}")


def go_live(env: dict[str, str]) -> None:
    """Turn writes to 3CX on the way an operator does: the audited go-live DAG, with its confirmation."""
    print("\n==> going live: a fresh install writes nothing to 3CX (every run is a dry run) until an")
    print("    operator turns writes on. The demo does it now, through the audited go-live DAG:")
    conf = {"writes_enabled": True, "confirm": "ENABLE WRITES", "note": "scripts/demo.py"}
    print(f"    airflow dags test m365_3cx_go_live -c '{json.dumps(conf)}'")
    airflow(env, "dags", "test", "m365_3cx_go_live", "-c", json.dumps(conf))
    for enabled, changed_by, changed_at in staging_query(
            "SELECT enabled, changed_by, changed_at FROM sync_control WHERE name = 'writes_enabled'"):
        print(f"    WRITES TO 3CX ENABLED: {bool(enabled)} (by {changed_by} at {changed_at}; see sync_control_log)")


def show_pbx(threecx_admin: Admin, title: str) -> None:
    state = threecx_admin("GET", "state")
    users = sorted(state["users"], key=lambda u: u["Number"])
    print(f"\n--- 3CX emulator: {title} ({len(users)} extensions) ---")
    for user in users:
        flag = "enabled " if user.get("Enabled") else "DISABLED"
        print(f"  {user['Number']:<5} {flag} {user.get('FirstName') or ''} {user.get('LastName') or ''}"
              f" <{user.get('EmailAddress') or ''}> {user.get('Mobile') or ''}")


def show_phonebook(threecx_admin: Admin, title: str) -> None:
    contacts = threecx_admin("GET", "state")["contacts"]
    ours = [c for c in contacts if str(c.get("Tag") or "").startswith("m365-sync:")]
    print(f"\n--- 3CX company phonebook: {title}: {len(ours)} synced entries, "
          f"{len(contacts) - len(ours)} others (hand-made / 3CX's own M365) left alone ---")
    for contact in sorted(ours, key=lambda c: (c.get("LastName") or "", c.get("FirstName") or ""))[:12]:
        print(f"  {contact.get('FirstName') or ''} {contact.get('LastName') or ''} | {contact.get('CompanyName') or ''}"
              f" | {contact.get('PhoneNumber') or ''} {contact.get('Business') or ''}")
    if len(ours) > 12:
        print(f"  ... {len(ours) - 12} more")


def show_statuses(threecx_admin: Admin, title: str, numbers: list[str] | None = None) -> None:
    users = sorted(threecx_admin("GET", "state")["users"], key=lambda u: u["Number"])
    counts: dict[str, int] = {}
    for user in users:
        counts[user.get("CurrentProfileName") or "?"] = counts.get(user.get("CurrentProfileName") or "?", 0) + 1
    print(f"\n--- 3CX statuses {title}: {counts} ---")
    for user in users:
        if numbers and user["Number"] in numbers:
            name = f"{user.get('FirstName')} {user.get('LastName')}"
            print(f"  {user['Number']:<5} {name}: {user.get('CurrentProfileName')}")


def change_contacts(graph_admin: Admin, owner: dict[str, Any]) -> None:
    """Add, edit and delete Outlook contacts of one user."""
    print(f"\n==> changing Outlook contacts of {owner['userPrincipalName']}")
    added = graph_admin("POST", f"users/{owner['id']}/contacts", json={
        "givenName": "Dana", "surname": "Demo", "companyName": "Fabrikam",
        "mobilePhone": "+1 425 555 0142", "businessPhones": ["+1 425 555 0143"],
        "emailAddresses": [{"name": "Dana Demo", "address": "dana.demo@fabrikam.example"}],
    })
    print("    added    Dana Demo (Fabrikam)")
    existing = [c for c in graph_admin("GET", f"users/{owner['id']}/mailbox")["contacts"]
                if c["id"] != added["id"] and (c.get("mobilePhone") or c.get("businessPhones"))
                and "Private" not in (c.get("categories") or [])]
    if len(existing) >= 2:
        graph_admin("PATCH", f"users/{owner['id']}/contacts/{existing[0]['id']}", json={"jobTitle": "Edited in Outlook",
                                                                                      "companyName": "Edited Ltd"})
        print(f"    edited   {existing[0].get('displayName')} -> company 'Edited Ltd'")
        graph_admin("DELETE", f"users/{owner['id']}/contacts/{existing[1]['id']}")
        print(f"    deleted  {existing[1].get('displayName')}")


def graph_time(instant: datetime) -> dict[str, str]:
    return {"dateTime": instant.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def change_tenant(graph_admin: Admin) -> None:
    """Rename, disable and delete a user, and add one, in the Graph emulator."""
    users = [u for u in graph_admin("GET", "state")["users"]
             if u.get("accountEnabled") and u.get("userType", "Member") == "Member" and not u.get("deleted")]
    renamed, disabled, deleted = users[0], users[1], users[2]
    print("\n==> changing the tenant in the Graph emulator")
    graph_admin("PATCH", f"users/{renamed['id']}", json={"surname": "Renamed-Smith",
                                                          "displayName": f"{renamed['givenName']} Renamed-Smith"})
    print(f"    renamed  {renamed['userPrincipalName']} -> surname 'Renamed-Smith'")
    graph_admin("POST", f"users/{disabled['id']}/disable")
    print(f"    disabled {disabled['userPrincipalName']}")
    graph_admin("DELETE", f"users/{deleted['id']}")
    print(f"    deleted  {deleted['userPrincipalName']}")
    new = graph_admin("POST", "users", json={
        "givenName": "Nova", "surname": "Newcomer", "displayName": "Nova Newcomer",
        "userPrincipalName": "nova.newcomer@contoso.example", "mail": "nova.newcomer@contoso.example",
        "mobilePhone": "+1 425 555 0199", "accountEnabled": True, "usageLocation": "US", "userType": "Member",
    })
    print(f"    added    {new.get('userPrincipalName', 'nova.newcomer@contoso.example')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40, help="users in the emulated tenant")
    parser.add_argument("--ui", action="store_true", help="keep running under 'airflow standalone' afterwards")
    args = parser.parse_args()

    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "airflow").mkdir(parents=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        graph_proc, graph = start_emulator(
            "emulators.graph", ["--port", "0", "--tls-dir", str(DEMO / "tls"), "--users", str(args.users)],
            "graph-emulator.log")
        procs.append(graph_proc)
        threecx_proc, threecx = start_emulator(
            "emulators.threecx", ["--port", "0", "--tls-dir", str(DEMO / "tls")], "threecx-emulator.log")
        procs.append(threecx_proc)
        print(f"==> Graph emulator at {graph['graph_url']}, 3CX emulator at {threecx['base_url']}")
        graph_admin = Admin(graph["graph_url"], graph["ca_bundle"])
        threecx_admin = Admin(threecx["base_url"], threecx["ca_bundle"])
        env = airflow_env(graph, threecx)
        print("==> preparing Airflow (metadata DB, pools, settings Variable)")
        airflow(env, "db", "migrate")
        airflow(env, "pools", "set", "graph_api", "4", "Microsoft Graph requests")
        airflow(env, "pools", "set", "threecx_api", "1", "3CX XAPI (one live token per client)")
        airflow(env, "variables", "set", "m365_3cx_settings", json.dumps(DEMO_SETTINGS))

        show_pbx(threecx_admin, "before the first sync (unmanaged extensions only)")
        print("\n==> first full sync on a fresh install: not live, so it is a dry run (plan stored, no writes)")
        dry_key = run_dag(env, "m365_3cx_full_sync")
        show_run(dry_key)
        planned = staging_query("SELECT action, count(*) FROM sync_plan WHERE run_key = :k GROUP BY action",
                                {"k": dry_key})
        reason = staging_query("SELECT dry_reason FROM sync_runs WHERE run_key = :k", {"k": dry_key})
        print(f"    dry run ({reason[0][0] if reason else '?'}): planned {dict(planned)}")
        go_live(env)
        show_run(run_dag(env, "m365_3cx_full_sync"))
        show_pbx(threecx_admin, "after the full sync")

        print("\n==> running the full sync again: it must write nothing")
        show_run(run_dag(env, "m365_3cx_full_sync"))

        show_phonebook(threecx_admin, "after the full sync")
        owner = next(u for u in graph_admin("GET", "state")["users"]
                     if u.get("mail") and u.get("accountEnabled") and u.get("userType") == "Member"
                     and graph_admin("GET", f"users/{u['id']}/mailbox")["contacts"])
        change_tenant(graph_admin)
        change_contacts(graph_admin, owner)
        show_run(run_dag(env, "m365_3cx_delta"))
        show_pbx(threecx_admin, "after the delta run")
        show_phonebook(threecx_admin, "after the delta run")

        print("\n==> calendar-driven status")
        run_dag(env, "m365_3cx_hourly")
        show_statuses(threecx_admin, "after the hourly run (seeded calendars and automatic replies)")
        available = {u["EmailAddress"]: u for u in threecx_admin("GET", "state")["users"]
                     if u.get("CurrentProfileName") == "Available" and u.get("Enabled") and u.get("EmailAddress")}
        members = [u for u in graph_admin("GET", "state")["users"] if (u.get("mail") or "").lower() in available]
        busy_user, ooo_user = members[0], members[1]
        numbers = [available[busy_user["mail"].lower()]["Number"], available[ooo_user["mail"].lower()]["Number"]]
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        meeting = graph_admin("POST", f"users/{busy_user['id']}/events", json={
            "subject": "Demo meeting", "showAs": "busy",
            "start": graph_time(now - timedelta(minutes=5)), "end": graph_time(now + timedelta(minutes=55))})
        graph_admin("PUT", f"users/{ooo_user['id']}/automaticReplies", json={"status": "alwaysEnabled",
                                                                             "externalAudience": "all"})
        print(f"    {busy_user['userPrincipalName']}: meeting now; "
              f"{ooo_user['userPrincipalName']}: automatic replies on")
        show_run(run_dag(env, "m365_3cx_delta"))
        show_statuses(threecx_admin, "after the delta run", numbers)
        graph_admin("PATCH", f"users/{busy_user['id']}/events/{meeting['id']}", json={"isCancelled": True})
        graph_admin("PUT", f"users/{ooo_user['id']}/automaticReplies", json={"status": "disabled"})
        print("    meeting cancelled; automatic replies turned off")
        show_run(run_dag(env, "m365_3cx_delta"))
        show_statuses(threecx_admin, "after the next delta run", numbers)

        if args.ui:
            print("\n==> starting 'airflow standalone' on http://127.0.0.1:8080 (Ctrl-C to stop)")
            print(f"    login: see {DEMO / 'airflow' / 'simple_auth_manager_passwords.json.generated'}")
            env["AIRFLOW__API__HOST"] = "127.0.0.1"
            env["AIRFLOW__API__PORT"] = "8080"
            standalone = subprocess.Popen([str(VENV_BIN / "airflow"), "standalone"], env=env, cwd=ROOT)
            procs.append(standalone)
            standalone.wait()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())
