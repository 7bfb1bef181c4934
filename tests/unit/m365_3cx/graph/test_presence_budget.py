"""The client-side request budget of the Teams presence poll (a sliding window)."""

from __future__ import annotations

import pytest

from m365_3cx.graph.presence import RequestBudget


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_budget_waits_only_when_the_window_is_full() -> None:
    t = FakeTime()
    budget = RequestBudget(3, 30.0, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        budget.acquire()
        t.now += 1
    assert t.slept == []
    budget.acquire()  # the 4th in 30 s waits until the 1st leaves the window
    assert t.slept == [pytest.approx(27.0)]
    t.now += 40  # an idle window: no waiting
    budget.acquire()
    assert len(t.slept) == 1 and budget.waited == pytest.approx(27.0)


def test_budget_never_exceeds_its_limit_in_any_window() -> None:
    t = FakeTime()
    budget = RequestBudget(5, 30.0, clock=t.clock, sleep=t.sleep)
    sent: list[float] = []
    for _ in range(23):
        budget.acquire()
        sent.append(t.now)
        t.now += 0.5
    assert all(sum(1 for s in sent if start <= s < start + 30.0) <= 5 for start in sent)


def test_budget_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError):
        RequestBudget(0)
