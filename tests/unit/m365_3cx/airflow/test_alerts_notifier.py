"""The failure notifier sends a real e-mail through an SMTP connection (local SMTP server)."""

from __future__ import annotations

import json
import socket
from email.header import decode_header, make_header
from types import SimpleNamespace
from typing import Any

import pytest

from m365_3cx.airflow.alerts import SyncFailureNotifier


def _context(reason: str) -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(dag_id="m365_3cx_full_sync", run_id="scheduled__2026-11-28T02:30:00+00:00"),
        "task_instance": SimpleNamespace(task_id="apply_extensions", map_index=-1),
        "reason": reason,
    }


def test_sends_alert_when_enabled(monkeypatch: pytest.MonkeyPatch, smtp_inbox: Any) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({
        "alerts": {"channel": "smtp", "smtp_conn_id": "smtp_alerts", "to": ["ops@example.com"]},
    }))
    SyncFailureNotifier().notify(_context("MassRemovalError: 9 of 40 would be disabled; password=topsecret"))
    assert len(smtp_inbox.messages) == 1
    message = smtp_inbox.messages[0]
    assert str(make_header(decode_header(message["Subject"]))) == (
        "[m365-3cx-sync] m365_3cx_full_sync failed in apply_extensions"
    )
    body = smtp_inbox.html(message)
    assert "scheduled__2026-11-28T02:30:00+00:00" in body
    assert "9 of 40 would be disabled" in body
    assert "topsecret" not in body


def test_off_by_default_sends_nothing(monkeypatch: pytest.MonkeyPatch, smtp_inbox: Any) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_M365_3CX_SETTINGS", raising=False)
    SyncFailureNotifier().notify(_context("boom"))
    assert smtp_inbox.messages == []


def test_unreachable_smtp_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DOWN", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": closed_port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "a@example.com", "retry_limit": 0,
                  "timeout": 2},
    }))
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({
        "alerts": {"channel": "smtp", "smtp_conn_id": "smtp_down", "to": ["ops@example.com"]},
    }))
    SyncFailureNotifier().notify(_context("boom"))
