"""Alert content: the facts an operator needs, never a secret."""

from __future__ import annotations

import pytest

from m365_3cx.alerts import MAX_REASON, FailureAlert, build_alert, one_line_reason, scrub


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
