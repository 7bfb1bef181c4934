"""Bounded concurrent writes with per-chunk recording (:mod:`m365_3cx.reconcile.concurrent`)."""

from __future__ import annotations

import threading
import time

import pytest

from m365_3cx.errors import ThreeCXRetriableError
from m365_3cx.reconcile.concurrent import run_chunked


class Recorder:
    def __init__(self, fail: dict[int, Exception] | None = None, delay: float = 0.0) -> None:
        self.fail = fail or {}
        self.delay = delay
        self.sent: list[int] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.events: list[tuple[str, object]] = []

    def write(self, item: int) -> tuple[int, str]:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.sent.append(item)
        try:
            time.sleep(self.delay)
            if item in self.fail:
                raise self.fail[item]
            return (item, "ok")
        finally:
            with self.lock:
                self.in_flight -= 1

    def run(self, items: list[int], **kwargs: object) -> list[tuple[int, str]]:
        return run_chunked(
            items, self.write, failed=lambda item, exc: (item, "failed"), skipped=lambda item: (item, "skipped"),
            record=lambda outcomes: self.events.append(("record", list(outcomes))),
            before_chunk=lambda chunk: self.events.append(("before", list(chunk))), **kwargs,  # type: ignore[arg-type]
        )


def test_outcomes_come_back_in_plan_order_per_chunk_with_bounded_concurrency() -> None:
    recorder = Recorder(delay=0.005)
    items = list(range(250))
    outcomes = recorder.run(items, concurrency=4, chunk_size=100)
    assert outcomes == [(i, "ok") for i in items]
    assert 1 < recorder.peak <= 4
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["before", "record"] * 3
    assert [len(chunk) for kind, chunk in recorder.events if kind == "record"] == [100, 100, 50]  # type: ignore[arg-type]


def test_before_chunk_runs_before_any_write_of_its_chunk() -> None:
    seen_before: list[int] = []
    order: list[str] = []

    def write(item: int) -> int:
        assert item in seen_before, "a write was sent before its chunk was prepared"
        order.append("write")
        return item

    def before(chunk: list[int]) -> None:
        seen_before.extend(chunk)
        order.append("before")

    run_chunked(list(range(7)), write, failed=lambda i, e: -i, skipped=lambda i: -i, record=lambda o: None,
                before_chunk=before, concurrency=3, chunk_size=3)
    assert order.count("before") == 3


def test_chunks_never_mix_phases() -> None:
    recorder = Recorder()
    items = [1, 2, 3, 11, 12, 21]
    recorder.run(items, concurrency=2, chunk_size=10, phase=lambda i: i // 10)
    assert [chunk for kind, chunk in recorder.events if kind == "before"] == [[1, 2, 3], [11, 12], [21]]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_error_stops_the_run_after_recording_every_outcome(concurrency: int) -> None:
    recorder = Recorder(fail={5: ThreeCXRetriableError("busy", status=503)})
    items = list(range(30))
    with pytest.raises(ThreeCXRetriableError):
        recorder.run(items, concurrency=concurrency, chunk_size=10)
    recorded = [o for kind, chunk in recorder.events if kind == "record" for o in chunk]  # type: ignore[union-attr]
    assert [item for item, _ in recorded] == items  # every change has exactly one outcome, in order
    results = dict(recorded)
    assert results[5] == "failed"
    assert all(results[i] == "ok" for i in range(5))
    assert all(results[i] == "skipped" for i in range(10, 30))  # later chunks never sent
    assert not [i for i in recorder.sent if i >= 10]
    for item in range(6, 10):  # in flight when it failed: recorded as it ended, else not sent
        assert results[item] == ("ok" if item in recorder.sent else "skipped")


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_chunked([1], lambda i: i, failed=lambda i, e: i, skipped=lambda i: i, record=lambda o: None,
                    concurrency=0)
