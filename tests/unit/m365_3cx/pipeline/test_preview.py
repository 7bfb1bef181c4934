"""Plan previews in task logs: the first N changes, readable, without field values."""

from __future__ import annotations

import logging

import pytest

from m365_3cx.pipeline.preview import describe, log_plan_preview
from m365_3cx.reconcile.plan import Change
from m365_3cx.reconcile.presence import ProfileSwitch

LOG = logging.getLogger("test.preview")


def _changes(n: int) -> list[Change]:
    return [Change("update", f"id{i}", str(300 + i), i, {"Mobile": ("+12065550100", "+12065550199"),
                                                          "LastName": ("Old", "Secretname")},
                   "fields changed", label=f"user{i}@contoso.example") for i in range(n)]


def test_lists_the_first_n_changes_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.preview")
    assert log_plan_preview(LOG, "extensions", _changes(15), 3) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "extensions plan, first 3 of 15 change(s) (12 more in sync_plan):"
    assert lines[1] == "  update 300 user0@contoso.example fields LastName, Mobile — fields changed"
    assert len(lines) == 4
    text = caplog.text
    assert "+1206555" not in text and "Secretname" not in text


def test_zero_or_no_changes_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.preview")
    assert log_plan_preview(LOG, "x", _changes(2), 0) == 0
    assert log_plan_preview(LOG, "x", [], 10) == 0
    assert caplog.records == []


def test_contact_and_status_lines() -> None:
    contact = Change("create", "0123456789abcdef0123", "+4930555", None, {"FirstName": (None, "Edda")},
                     "new entry", "contact")
    assert describe(contact) == "create phonebook entry 0123456789ab — new entry"
    delete = Change("delete", "fedcba9876543210", "", 77, {}, "no longer held by any in-scope mailbox", "contact")
    assert describe(delete) == ("delete phonebook entry fedcba987654 (3CX id 77) — "
                                "no longer held by any in-scope mailbox")
    switch = ProfileSwitch("u1", 5, "301", "Available", "Out of office", "automatic_replies")
    assert describe(switch) == "set status of extension 301: Available -> Out of office (automatic_replies)"
