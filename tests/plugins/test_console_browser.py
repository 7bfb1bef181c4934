"""The ops console in a real browser: Playwright driving Debian's chromium against a real
``airflow api-server`` (SimpleAuthManager, a known password), logged in through Airflow's own
login page.

Staging (PostgreSQL) is filled by the real pipeline against the emulators: a full sync and the
hourly status sync that write, then a Graph change and a dry delta run that only plans. The
test asserts the health header, a run's change set and its filters, a per-user history, a note
filter, the pending plan and the settings source, and saves a screenshot of every page under
``test-artifacts/console/`` (``M365_3CX_TEST_ARTIFACTS`` overrides the directory).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa

from tests.dags.dag_helpers import assert_success, connect_airflow, run_dag

pytestmark = [pytest.mark.browser, pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("M365_3CX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PG_ADMIN_URL = os.environ.get("M365_3CX_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 20},
    "presence": {"enabled": True, "shard_size": 20},
}
#: What an operator typed into Admin -> Variables; the environment variable hides it.
UI_SETTINGS = {**SETTINGS, "timezone": "Europe/Berlin"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _artifacts() -> Path:
    path = Path(os.environ.get("M365_3CX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def staging(airflow_db: str, graph_emulator: Any, threecx_emulator: Any) -> Iterator[dict[str, Any]]:
    """A PostgreSQL staging database filled by real DAG runs against the emulators."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh does it in CI)")
    name = f"m365_3cx_console_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    for handle in (graph_emulator, threecx_emulator):
        handle.admin("DELETE", "faults")
        handle.admin("POST", "reset")
        handle.admin("DELETE", "counters")
    mp = pytest.MonkeyPatch()
    engine = sa.create_engine(url)
    try:
        connect_airflow(mp, graph_emulator.info, threecx_emulator.info, url, SETTINGS)
        _writes_on()
        assert_success(run_dag("m365_3cx_full_sync"))
        assert_success(run_dag("m365_3cx_hourly"))
        users = graph_emulator.admin("GET", "state").json()["users"]
        member = next(u for u in users if u.get("accountEnabled") and not u.get("deleted")
                      and u.get("userType", "Member") != "Guest" and u.get("mail"))
        graph_emulator.admin("PATCH", f"users/{member['id']}", json={"surname": "Renamedby Console"})
        assert_success(run_dag("m365_3cx_delta", dry_run=True))
        with engine.connect() as conn:
            number = conn.execute(sa.text("SELECT number FROM extension_map WHERE user_id = :u"),
                                  {"u": member["id"]}).scalar_one()
        yield {"url": url, "env": dict(os.environ), "member": member, "number": number, "engine": engine}
    finally:
        mp.undo()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _writes_on() -> None:
    """Switch the go-live switch on when this version of the sync has one (writes are off on a fresh install)."""
    try:
        from m365_3cx.staging import control  # type: ignore[attr-defined]
    except ImportError:
        return
    from m365_3cx.airflow.hooks import StagingHook

    engine = StagingHook().get_engine()
    try:
        with engine.begin() as conn:
            import datetime as dt

            control.set_writes_enabled(conn, True, changed_by="console test", now=dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def api_server(staging: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``airflow api-server`` on a free port with the plugin, SimpleAuthManager and a known password."""
    home = tmp_path_factory.mktemp("api-server")
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"ops": password}))
    port = _free_port()
    env = {**staging["env"],
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__HOST": "127.0.0.1",
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}", "AIRFLOW__API__WORKERS": "1",
           "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32)}
    log = home / "api-server.log"
    airflow = Path(sys.executable).with_name("airflow")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(airflow), "api-server", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"api-server exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if requests.get(f"{base}/api/v2/version", timeout=3).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"api-server not up after 120 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        token = requests.post(f"{base}/auth/token", json={"username": "ops", "password": password},
                              timeout=30).json()["access_token"]
        # An operator edits the settings in Admin -> Variables; the environment variable hides the edit.
        auth = {"Authorization": f"Bearer {token}"}
        variable = f"{base}/api/v2/variables/m365_3cx_settings"
        requests.delete(variable, headers=auth, timeout=30)
        response = requests.post(f"{base}/api/v2/variables", headers=auth,
                                 json={"key": "m365_3cx_settings", "value": json.dumps(UI_SETTINGS)}, timeout=30)
        assert response.status_code in (200, 201), response.text
        yield {"base": base, "user": "ops", "password": password, "log": log, "token": token}
        requests.delete(variable, headers=auth, timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.copy(log, _artifacts() / "api-server.log")


@pytest.fixture(scope="module")
def browser_page(api_server: dict[str, Any]) -> Iterator[Any]:
    """A chromium page logged in through Airflow's login page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{api_server['base']}/auth/login")
        page.fill("input[name=username]", api_server["user"])
        page.fill("input[name=password]", api_server["password"])
        page.screenshot(path=str(_artifacts() / "00-login.png"))
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/auth/login" not in url)
        assert any(c["name"] == "_token" for c in context.cookies()), "Airflow's login set no session cookie"
        yield page
        context.close()
        browser.close()


def _console(page: Any, api_server: dict[str, Any], path: str, shot: str) -> Any:
    page.goto(f"{api_server['base']}/m365-3cx/{path}")
    page.screenshot(path=str(_artifacts() / f"{shot}.png"), full_page=True)
    return page


def test_console_needs_a_login(api_server: dict[str, Any]) -> None:
    for path in ("/m365-3cx/", "/m365-3cx/api/health", "/m365-3cx/users?q=x"):
        assert requests.get(api_server["base"] + path, timeout=30).status_code in (401, 403), path


def test_health_header_shows_each_feature(browser_page: Any, api_server: dict[str, Any]) -> None:
    page = _console(browser_page, api_server, "", "01-overview")
    cards = page.locator("#health .card")
    assert cards.count() == 3
    text = page.inner_text("#health")
    for label in ("Users → extensions", "Contacts → phonebook", "Calendar → 3CX status"):
        assert label in text
    users = page.locator(".card[data-feature=users]")
    assert "ago" in users.inner_text() and "failures in the last 24 h: 0" in users.inner_text()
    assert "stale" not in (users.get_attribute("class") or "")
    assert page.locator("#chart rect.ok").count() >= 1  # today's writes
    assert page.locator("table.runs tr.run").count() == 3
    assert "DRY" in page.inner_text("table.runs")


def test_run_change_set_and_filters(browser_page: Any, api_server: dict[str, Any], staging: dict[str, Any]) -> None:
    page = _console(browser_page, api_server, "runs?dag_id=m365_3cx_full_sync", "02-runs")
    page.click("table.runs tr.run >> a >> nth=0")
    page.wait_for_selector("table.changes")
    assert "m365_3cx_full_sync" in page.inner_text("h1")
    assert page.locator("table.changes tr.change").count() > 5
    page.select_option("#change-filters select[name=action]", "create")
    page.select_option("#change-filters select[name=type]", "extension")
    page.click("#change-filters button")
    page.wait_for_load_state()
    rows = page.locator("table.changes tr.change")
    assert rows.count() > 0
    assert {rows.nth(i).get_attribute("data-action") for i in range(rows.count())} == {"create"}
    table = page.inner_text("table.changes")
    assert "FirstName:" in table and "→" in table and "applied" in table
    page.screenshot(path=str(_artifacts() / "03-run-change-set.png"), full_page=True)
    link = page.locator("a", has_text="Airflow run").first.get_attribute("href")
    assert link.startswith("/dags/m365_3cx_full_sync/runs/")
    page.click("text=Writes (audit)")
    page.wait_for_selector("table.writes")
    assert "ok" in page.inner_text("table.writes")


def test_per_user_history(browser_page: Any, api_server: dict[str, Any], staging: dict[str, Any]) -> None:
    member = staging["member"]
    page = _console(browser_page, api_server, "users", "04-users")
    page.fill("#user-search input[name=q]", staging["number"])
    page.click("#user-search button")
    page.wait_for_selector("#user-head")
    assert member["userPrincipalName"] in page.inner_text("#user-head")
    body = page.inner_text("main")
    assert staging["number"] in body
    verdict = page.locator("#scope-verdict")  # why the user is in scope (issue 12 #6)
    assert verdict.locator("b").inner_text() == "in scope"
    assert verdict.locator("li[data-code=in_scope]").count() == 1
    plan = page.locator("table.changes tr.change")
    actions = {plan.nth(i).get_attribute("data-action") for i in range(plan.count())}
    assert {"create", "update"} <= actions  # created by the full sync, rename planned by the dry delta
    assert "Renamedby Console" in page.inner_text("table.changes")
    assert "DRY" in page.inner_text("table.changes")
    assert "ok" in page.inner_text("table.writes")
    page.screenshot(path=str(_artifacts() / "05-user-history.png"), full_page=True)
    page.fill("#user-search input[name=q]", member["userPrincipalName"].upper())
    page.click("#user-search button")
    page.wait_for_selector("#user-head")
    assert member["userPrincipalName"] in page.inner_text("#user-head")
    page.fill("#user-search input[name=q]", "nobody-at-all@nowhere.example")
    page.click("#user-search button")
    page.wait_for_selector("#no-match")


def test_note_filter(browser_page: Any, api_server: dict[str, Any], staging: dict[str, Any]) -> None:
    with staging["engine"].connect() as conn:
        by_severity = dict(conn.execute(sa.text(
            "SELECT severity, count(*) FROM sync_notes n JOIN sync_runs r ON r.run_key = n.run_key "
            "WHERE r.dag_id = 'm365_3cx_full_sync' GROUP BY severity")).all())
    assert by_severity.get("info"), by_severity  # contacts without a phone number
    page = _console(browser_page, api_server, "notes?run=" + quote(_full_run_key(staging), safe=""), "06-notes")
    assert f"{by_severity['info']:,} info" in page.inner_text("#note-counts")
    page.select_option("#note-filters select[name=severity]", "info")
    page.click("#note-filters button")
    page.wait_for_load_state()
    rows = page.locator("table.notes tr.note")
    assert rows.count() == min(50, by_severity["info"])
    assert {rows.nth(i).get_attribute("data-severity") for i in range(rows.count())} == {"info"}
    assert "no dialable number" in page.inner_text("table.notes")
    page.screenshot(path=str(_artifacts() / "07-notes-info.png"), full_page=True)


def _full_run_key(staging: dict[str, Any]) -> str:
    with staging["engine"].connect() as conn:
        return conn.execute(sa.text(
            "SELECT run_key FROM sync_runs WHERE dag_id = 'm365_3cx_full_sync' ORDER BY started_at DESC LIMIT 1"
        )).scalar_one()


def test_pending_plan_of_the_latest_dry_run(browser_page: Any, api_server: dict[str, Any],
                                            staging: dict[str, Any]) -> None:
    page = _console(browser_page, api_server, "plan", "08-pending-plan")
    assert "m365_3cx_delta" in page.inner_text("#pending-run")
    rows = page.locator("table.changes tr.change")
    assert rows.count() >= 1
    text = page.inner_text("table.changes")
    assert staging["member"]["userPrincipalName"] in text and "Renamedby Console" in text
    assert "dry run" in text


def test_settings_source_and_hidden_ui_edit(browser_page: Any, api_server: dict[str, Any]) -> None:
    page = _console(browser_page, api_server, "settings", "09-settings")
    assert "environment variable" in page.inner_text("#settings-source")
    assert "Admin → Variables" in page.inner_text(".settings-warning")
    assert "extensionAttribute1" in page.inner_text("main")


def test_json_api_serves_the_same_data(api_server: dict[str, Any], staging: dict[str, Any]) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_server['token']}"
    health = session.get(f"{api_server['base']}/m365-3cx/api/health", timeout=30).json()
    assert [f["name"] for f in health["features"]] == ["users", "phonebook", "statuses"]
    assert health["features"][0]["last_success"]["dag_id"] in ("m365_3cx_full_sync", "m365_3cx_delta")
    user = session.get(f"{api_server['base']}/m365-3cx/api/users", params={"q": staging["number"]}, timeout=30).json()
    assert user["history"]["user"]["upn"] == staging["member"]["userPrincipalName"]
    plan = session.get(f"{api_server['base']}/m365-3cx/api/plan", timeout=30).json()
    assert plan["pending"]["run"]["dry_run"] is True and plan["pending"]["changes"]["items"]


def test_not_live_banner_while_writes_are_off(browser_page: Any, api_server: dict[str, Any],
                                              staging: dict[str, Any]) -> None:
    """With the go-live switch off every page says NOT LIVE (and with it on, none does)."""
    import datetime as dt

    try:
        from m365_3cx.staging import control  # type: ignore[attr-defined]
    except ImportError:
        pytest.skip("this version of the sync has no go-live switch")
    page = _console(browser_page, api_server, "", "10-live")
    assert page.locator("#not-live").count() == 0
    with staging["engine"].begin() as conn:
        control.set_writes_enabled(conn, False, changed_by="console test", now=dt.datetime.now(dt.UTC))
    try:
        page = _console(browser_page, api_server, "runs", "11-not-live")
        assert "NOT LIVE — writes are off" in page.inner_text("#not-live")
    finally:
        with staging["engine"].begin() as conn:
            control.set_writes_enabled(conn, True, changed_by="console test", now=dt.datetime.now(dt.UTC))
