"""Alert content: the facts an operator needs, never a secret."""

from __future__ import annotations

import pytest

from m365_3cx.alerts import (
    MAX_ERROR,
    MAX_REASON,
    FailureAlert,
    StaleAlert,
    build_alert,
    build_stale_alert,
    full_reason,
    one_line_reason,
    scrub,
)


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("401 with Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.abc.def", "eyJ0eXAiOiJKV1Qi"),
        ("token POST failed: client_secret=s3cr3t-Value&grant_type=x", "s3cr3t-Value"),
        ("GET https://graph/v1.0/users/delta?$deltatoken=AbCdEf123 failed", "AbCdEf123"),
        ("GET https://graph/v1.0/users?$skiptoken=XyZ987&$top=5", "XyZ987"),
        ("password: hunter22 rejected", "hunter22"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----", "MIIEv"),
    ],
)
def test_scrub_removes_credentials(text: str, leak: str) -> None:
    assert leak not in scrub(text)


def test_one_line_reason_takes_first_line_and_truncates() -> None:
    assert one_line_reason("\n  first line\nsecond line") == "first line"
    assert one_line_reason(None).startswith("no reason recorded")
    long = one_line_reason("x" * 1000)
    assert len(long) == MAX_REASON and long.endswith("…")


def test_build_alert_names_dag_run_task_reason_and_link() -> None:
    alert = FailureAlert(
        dag_id="m365_3cx_delta", run_id="manual__2026-11-28T05:00:00+00:00", task_id="apply_extensions",
        reason="12 of 40 managed extensions would be disabled or deleted; client_secret=abc123",
        base_url="https://airflow.example.com/",
    )
    subject, body = build_alert(alert)
    assert subject == "[m365-3cx-sync] m365_3cx_delta failed in apply_extensions"
    assert "manual__2026-11-28T05:00:00+00:00" in body
    assert "12 of 40 managed extensions" in body
    assert "abc123" not in body
    assert "https://airflow.example.com/dags/m365_3cx_delta/runs/manual__2026-11-28T05%3A00%3A00%2B00%3A00" in body


def test_build_alert_escapes_html() -> None:
    _, body = build_alert(FailureAlert("d", "r", "t", "<script>alert(1)</script>"))
    assert "<script>" not in body


SETTINGS_ERROR = """invalid settings (4 problems):
  - numbering.pool_first: must be digits, got '2a0'
  - timezone: unknown IANA time zone 'Mars/Olympus'
  - alerts.to: channel 'smtp' needs at least one recipient
  - guards.mass_removal_fraction: must be between 0.0 and 1.0, got 3"""


def test_failure_alert_carries_the_whole_error_scrubbed() -> None:
    reason = SETTINGS_ERROR + "\n  while reading token: client_secret=TopSecret42 "
    _, body = build_alert(FailureAlert("m365_3cx_delta", "r1", "extract_users", reason))
    for line in SETTINGS_ERROR.splitlines():
        assert line.replace("'", "&#x27;") in body
    assert "TopSecret42" not in body


def test_full_reason_keeps_every_line_and_bounds_the_size() -> None:
    assert full_reason(SETTINGS_ERROR).count("\n") == 4
    assert full_reason("   ").startswith("no reason recorded")
    assert len(full_reason("y" * (MAX_ERROR + 50))) == MAX_ERROR


def test_stale_alert_names_feature_age_limit_and_dags() -> None:
    alert = StaleAlert("users", ("m365_3cx_full_sync", "m365_3cx_delta"), "2026-12-01 10:00 UTC", 95, 90,
                       base_url="https://airflow.example.com")
    subject, body = build_stale_alert(alert)
    assert subject == "[m365-3cx-sync] no successful users -> extensions sync for 95 min"
    assert "2026-12-01 10:00 UTC" in body and "90 minutes" in body and "alerts.stale_users_minutes" in body
    assert "https://airflow.example.com/dags/m365_3cx_delta" in body
    never = build_stale_alert(StaleAlert("status", ("m365_3cx_hourly",), None, 200, 180))[1]
    assert "No successful run is recorded at all" in never
    subject, _ = build_stale_alert(StaleAlert("phonebook", ("m365_3cx_delta",), "t", 0, 90, recovered=True))
    assert subject == "[m365-3cx-sync] contacts -> phonebook sync is running again"
