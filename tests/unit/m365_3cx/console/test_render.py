"""Console presentation helpers and templates: readable numbers, safe HTML, Airflow links, the chart."""

from __future__ import annotations

from m365_3cx.console.render import (
    age,
    airflow_run_url,
    airflow_task_url,
    chart,
    counts_text,
    failed_task,
    num,
    render,
    value_text,
    when,
)


def test_numbers_and_durations_read_like_words() -> None:
    assert num(1234567) == "1,234,567" and num(None) == "\u2013" and num(True) == "yes" and num(2.5) == "2.50"
    assert [age(s) for s in (None, 5, 125, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "never", "5 s", "2 min", "3 h 05 min", "2 d 4 h"]
    assert when("2026-12-02T01:30:05+00:00") == "2026-12-02 01:30:05 UTC" and when(None) == "\u2013"
    assert value_text(None) == "(empty)" and value_text(False) == "no" and value_text(["a", "b"]) == "a, b"
    assert value_text({"busy": "Away"}) == "busy: Away"


def test_counts_are_sentences_without_zeros_or_json() -> None:
    counts = {"extract": {"pages": 2, "inserted": 1200, "updated": 0}, "apply": {"created": 3, "failed": 0},
              "mode": "full", "dry_run": False}
    text = dict(counts_text(counts))
    assert text["extract"] == "2 pages · 1,200 inserted"
    assert text["apply"] == "3 created"
    assert text["mode"] == "mode full"
    assert "dry run" not in text and "{" not in "".join(text.values())


def test_airflow_links_encode_run_ids() -> None:
    run_id = "manual__2026-12-02T01:00:00+00:00"
    url = airflow_run_url("", "m365_3cx_delta", run_id)
    assert url == "/dags/m365_3cx_delta/runs/manual__2026-12-02T01%3A00%3A00%2B00%3A00"
    assert airflow_task_url("/airflow/", "d", "r", "contacts.apply_phonebook") == (
        "/airflow/dags/d/runs/r/tasks/contacts.apply_phonebook")
    assert failed_task("apply_extensions: guard stopped: 12 removals") == "apply_extensions"
    assert failed_task("invalid settings (4 problems):") is None and failed_task(None) is None


def test_chart_stacks_results_and_scales_to_the_busiest_day() -> None:
    days = [{"day": "2026-12-01", "ok": 10, "failed": 0, "other": 0},
            {"day": "2026-12-02", "ok": 5, "failed": 5, "other": 0},
            {"day": "2026-12-03", "ok": 0, "failed": 0, "other": 0}]
    geometry = chart(days, width=300, height=130)
    assert geometry["top"] == 10 and geometry["total"] == 20
    first, second, third = geometry["bars"]
    assert [s["kind"] for s in first["segments"]] == ["ok"] and first["segments"][0]["h"] == 100.0
    assert [s["kind"] for s in second["segments"]] == ["ok", "failed"]
    assert sum(s["h"] for s in second["segments"]) == 100.0 and third["segments"] == []
    assert "5 failed" in second["title"]


def test_pages_escape_what_they_show() -> None:
    result = {"items": [{"id": 1, "run_key": "k", "step": "transform", "at": None, "kind": "contact",
                         "object_key": "u/c", "label": "<b>x</b>", "field": "displayName", "severity": "info",
                         "message": "<script>alert(1)</script>"}],
              "page": 1, "size": 50, "has_next": True, "counts": {"info": {"contact": 1}}, "run_keys": ["k"]}
    html = render("notes.html", title="Notes", nav="notes", base="/m365-3cx", ui="", params={"severity": "info"},
                  refresh_seconds=60, health=None, result=result, kinds=["user", "contact"])
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "?severity=info&amp;page=2" in html  # the pager keeps the filters
    assert "1 info" in html


def test_header_says_not_live_while_writes_are_off_and_lists_running_runs() -> None:
    def page(enabled: bool, available: bool = True) -> str:
        health = {"writes": {"available": available, "enabled": enabled, "changed_at": "2026-12-02T01:00:00+00:00",
                             "changed_by": "admin"},
                  "features": [{"name": "users", "label": "Users", "stale": True, "age_seconds": 7200,
                                "last_success_at": "2026-12-02T00:00:00+00:00", "stale_after_minutes": 90,
                                "last_success": None, "failures_24h": 2, "last_run": None}],
                  "running": [{"run_key": "d/r", "dag_id": "d", "started_at": "2026-12-02T01:00:00+00:00",
                               "dry_run": True}]}
        return render("approvals.html", title="t", nav="approvals", base="/m365-3cx", ui="", params={},
                      refresh_seconds=60, health=health,
                      result={"available": False, "items": [], "page": 1, "size": 50, "has_next": False})

    off = page(False)
    assert "NOT LIVE" in off and 'id="live"' not in off
    on = page(True)
    assert "NOT LIVE" not in on and "switched on by admin" in on
    assert "NOT LIVE" not in page(True, available=False)  # no switch in this install: nothing to say
    assert "no successful sync for 2 h 00 min" in on and "Running now" in on and "(dry)" in on


def test_users_page_shows_the_scope_explanation_and_the_protected_users() -> None:
    history = {"user": {"user_id": "u3", "upn": "cleo@contoso.example", "display_name": "Cleo",
                        "account_enabled": False, "deleted": False, "user_type": "Member", "in_scope": False,
                        "first_seen_at": None},
               "extension": {"number": "203", "status": "active", "adopted": False, "threecx_id": 9,
                             "assigned_at": None, "removal_since": "2026-12-01T10:00:00+00:00"},
               "target": None, "presence": None,
               "scope": {"verdict": "out_of_scope", "reasons": [
                   {"code": "not_in_group", "message": "not a member of the scope group <g>"}]},
               "plan": {"items": [], "page": 1, "size": 50, "has_next": False},
               "writes": {"items": [], "page": 1, "size": 50, "has_next": False},
               "notes": {"items": [], "page": 1, "size": 50, "has_next": False},
               "trace": {"available": False, "items": []}}
    common = {"title": "Users", "nav": "users", "base": "/m365-3cx", "ui": "", "refresh_seconds": 60, "health": None,
              "matches": None, "unknown_trace": None}
    html = render("users.html", params={"id": "u3"}, history=history, protected=None, **common)
    assert "out of scope" in html and 'data-code="not_in_group"' in html and "&lt;g&gt;" in html
    assert "disabled for a removed user since" in html
    listing = render("users.html", params={}, history=None, protected={
        "items": [{"user_id": "u9", "upn": "boss@contoso.example", "display_name": "Boss",
                   "protection": "protected_upn", "number": "200"}], "page": 1, "size": 50, "has_next": False},
        **common)
    assert 'id="protected-users"' in listing and "protected upn" in listing and "boss@contoso.example" in listing
    empty = render("users.html", params={}, history=None, protected={"items": [], "page": 1, "size": 50,
                                                                    "has_next": False}, **common)
    assert 'id="no-protected"' in empty
