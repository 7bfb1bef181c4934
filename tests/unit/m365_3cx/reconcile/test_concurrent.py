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
    assert kinds == ["before", "before", "record", "before", "record", "record"]  # the next chunk is queued first
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
    assert all(results[i] == "skipped" for i in range(20, 30))  # chunks after the next one: never prepared
    assert not [i for i in recorder.sent if i >= 20]
    assert [chunk for kind, chunk in recorder.events if kind == "before"][-1][0] < 20  # type: ignore[index]
    if concurrency == 1:
        assert not [i for i in recorder.sent if i >= 10]  # one after the other: nothing after the error
    for item in [*range(6, 20)]:  # in flight when it failed: recorded as it ended, else not sent
        assert results[item] == ("ok" if item in recorder.sent else "skipped")


class Gate:
    """Writes that block on events, to observe the pipeline without timing."""

    def __init__(self) -> None:
        self.started: dict[int, threading.Event] = {}
        self.release: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.sent: list[int] = []

    def started_event(self, item: int) -> threading.Event:
        with self.lock:
            return self.started.setdefault(item, threading.Event())

    def release_event(self, item: int) -> threading.Event:
        with self.lock:
            return self.release.setdefault(item, threading.Event())


def test_the_next_chunk_is_in_flight_while_a_chunk_is_recorded() -> None:
    gate = Gate()
    recorded: list[list[int]] = []
    in_flight_while_recording: list[bool] = []

    def write(item: int) -> int:
        gate.started_event(item).set()
        if item == 2:  # the first write of chunk 1 stays in flight until chunk 0 has been recorded
            assert gate.release_event(2).wait(10), "chunk 0 was never recorded while chunk 1 was in flight"
        return item

    def record(outcomes: list[int]) -> None:
        if outcomes[0] == 0:
            in_flight_while_recording.append(gate.started_event(2).wait(10))
            gate.release_event(2).set()
        recorded.append(outcomes)

    outcomes = run_chunked(list(range(6)), write, failed=lambda i, e: -i, skipped=lambda i: -100 - i,
                           record=record, concurrency=2, chunk_size=2)
    assert in_flight_while_recording == [True]
    assert recorded == [[0, 1], [2, 3], [4, 5]]
    assert outcomes == list(range(6))


def test_an_error_in_the_next_chunk_while_one_is_recorded_records_everything_once() -> None:
    recorder = Recorder()
    error = ThreeCXRetriableError("busy", status=503)
    failed_now = threading.Event()

    def write(item: int) -> tuple[int, str]:
        if item == 3:  # chunk 1 fails while chunk 0 is being recorded
            failed_now.set()
            raise error
        return recorder.write(item)

    events: list[tuple[str, list[tuple[int, str]]]] = []

    def record(outcomes: list[tuple[int, str]]) -> None:
        if outcomes[0][0] == 0:
            assert failed_now.wait(10)
        events.append(("record", list(outcomes)))

    with pytest.raises(ThreeCXRetriableError) as raised:
        run_chunked(list(range(12)), write, failed=lambda i, e: (i, "failed"), skipped=lambda i: (i, "skipped"),
                    record=record, before_chunk=lambda chunk: events.append(("before", [(i, "") for i in chunk])),
                    concurrency=2, chunk_size=3)
    assert raised.value is error
    recorded = [o for kind, chunk in events if kind == "record" for o in chunk]
    assert [item for item, _ in recorded] == list(range(12))
    results = dict(recorded)
    assert [results[i] for i in range(3)] == ["ok"] * 3  # chunk 0 ended before the error
    assert results[3] == "failed"
    assert all(results[i] == ("ok" if i in recorder.sent else "skipped") for i in (4, 5))
    assert all(results[i] == "skipped" for i in range(6, 12)) and not [i for i in recorder.sent if i >= 6]
    assert [chunk[0][0] for kind, chunk in events if kind == "before"] == [0, 3]  # chunks 2 and 3 never prepared


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_failing_before_chunk_sends_nothing_of_its_chunk_after_recording_the_previous_one(
        concurrency: int) -> None:
    recorder = Recorder()

    def before(chunk: list[int]) -> None:
        if chunk[0] == 4:
            raise ThreeCXRetriableError("busy", status=503)  # e.g. the idempotent-create lookup

    recorded: list[list[tuple[int, str]]] = []
    with pytest.raises(ThreeCXRetriableError):
        run_chunked(list(range(12)), recorder.write, failed=lambda i, e: (i, "failed"),
                    skipped=lambda i: (i, "skipped"), record=recorded.append, before_chunk=before,
                    concurrency=concurrency, chunk_size=4)
    assert recorded == [[(i, "ok") for i in range(4)]]
    assert sorted(recorder.sent) == [0, 1, 2, 3]


def test_phases_never_overlap_in_flight() -> None:
    lock = threading.Lock()
    running: dict[int, int] = {}
    overlaps: list[tuple[int, int]] = []
    next_phase_started = threading.Event()

    def write(item: int) -> int:
        phase = item // 10
        with lock:
            overlaps.extend((phase, other) for other, n in running.items() if n and other != phase)
            running[phase] = running.get(phase, 0) + 1
        try:
            if phase == 1:
                next_phase_started.set()
            if item == 3:  # the last write of phase 0 would see phase 1 start if it were queued behind it
                next_phase_started.wait(0.5)
            return item
        finally:
            with lock:
                running[phase] -= 1

    items = [1, 2, 3, 11, 12, 13, 21]
    assert run_chunked(items, write, failed=lambda i, e: -i, skipped=lambda i: -i, record=lambda o: None,
                       concurrency=4, chunk_size=2, phase=lambda i: i // 10) == items
    assert overlaps == []


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_chunked([1], lambda i: i, failed=lambda i, e: i, skipped=lambda i: i, record=lambda o: None,
                    concurrency=0)
