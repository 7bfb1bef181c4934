"""Bounded concurrent 3CX writes, with every outcome recorded chunk by chunk.

The apply steps write one record per request (the XAPI has no batch create or update).
:func:`run_chunked` sends up to ``concurrency`` of them at once over the client's one shared
token (:class:`~m365_3cx.threecx.client.ThreeCXClient` is thread safe: one session per thread,
the token behind a lock; 429/503 with ``Retry-After`` are retried per request by the transport).

The writes are pipelined: the next chunk is prepared (``before_chunk``) and queued behind the
current one, so the ``concurrency`` writers stay busy across chunk boundaries while the main
thread records the chunk that just finished (``record``, bulk SQL). Chunks of different phases
(``phase``) are not pipelined: every write of a phase has ended before the next phase's first one
is sent.

Crash safety: ``before_chunk`` runs (and commits) before any write of its chunk is sent (the
phonebook records its *pending* entries there, so a create whose answer is lost is re-linked by its
tag), and ``record`` receives each chunk's outcomes in plan order, each outcome exactly once. A task
that dies mid-run leaves at most two chunks of writes unrecorded (the one being recorded and the
one in flight behind it); their plan rows stay open, and the next snapshot sees what reached 3CX.
A retriable error (the transport has already retried) stops the run: writes already in flight
finish and are recorded as they ended, writes not started yet and every later change are recorded
as skipped, then the error is re-raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Changes whose outcomes are recorded together (one transaction of bulk statements).
CHUNK_SIZE: Final = 100

_NOT_TRIED: Final = object()
"""What a queued write returns instead of running once the run is stopping."""


def _segments(items: Sequence[T], key: Callable[[T], Hashable] | None,
              size: int) -> Iterator[tuple[Hashable, list[T]]]:
    """Consecutive ``(key, chunk)`` of at most ``size`` items; a chunk never mixes two values of ``key``."""
    chunk: list[T] = []
    current: Hashable = None
    for item in items:
        k = key(item) if key is not None else None
        if chunk and (len(chunk) >= size or k != current):
            yield current, chunk
            chunk = []
        current = k
        chunk.append(item)
    if chunk:
        yield current, chunk


def run_chunked(
    items: Sequence[T],
    write: Callable[[T], R],
    *,
    failed: Callable[[T, BaseException], R],
    skipped: Callable[[T], R],
    record: Callable[[list[R]], None],
    before_chunk: Callable[[list[T]], None] | None = None,
    concurrency: int = 1,
    chunk_size: int = CHUNK_SIZE,
    phase: Callable[[T], Hashable] | None = None,
) -> list[R]:
    """Execute ``write`` for every item, at most ``concurrency`` at a time, recording per chunk.

    :param items: the changes, in plan order.
    :param write: sends one change and returns its outcome (a refused change is a *failed* outcome,
        not an exception); raising stops the run.
    :param failed: the outcome of an item whose ``write`` raised.
    :param skipped: the outcome of an item not tried.
    :param record: stores outcomes in plan order: once per chunk, and once for everything left when
        the run stops after an error.
    :param before_chunk: runs before the first write of each chunk (e.g. records pending creates);
        with ``concurrency`` > 1 it may run while the previous chunk's writes are in flight. When it
        raises, no write of its chunk is sent: the previous chunk is finished and recorded, then the
        error propagates (the chunk and the later ones are not recorded).
    :param concurrency: writes in flight at once (1 = one after the other, in the caller's thread,
        no pipelining).
    :param chunk_size: items per chunk.
    :param phase: chunks never mix items with different values (e.g. the action: all deletes of a
        plan run after its creates, as the plan orders them), and no write of a phase is sent
        before every write of the previous phase has ended.
    :return: every outcome, in plan order.
    :raises Exception: the first exception ``write`` raised (in plan order), after recording every outcome.
    """
    if concurrency < 1 or chunk_size < 1:
        raise ValueError("concurrency and chunk_size must be at least 1")
    chunks = list(_segments(items, phase, chunk_size))
    if concurrency == 1:
        return _run_sequential([chunk for _, chunk in chunks], write, failed, skipped, record, before_chunk,
                               len(items))
    return _Pipeline(chunks, write, failed, skipped, record, before_chunk, concurrency, len(items)).run()


def _stopped(error: BaseException, tried: int, total: int) -> None:
    log.warning("3CX apply stopped after an error (%d of %d changes sent or queued): %s",
                tried, total, type(error).__name__)


def _run_sequential(
    chunks: list[list[T]],
    write: Callable[[T], R],
    failed: Callable[[T, BaseException], R],
    skipped: Callable[[T], R],
    record: Callable[[list[R]], None],
    before_chunk: Callable[[list[T]], None] | None,
    total: int,
) -> list[R]:
    """One write after the other in the caller's thread, recording after each chunk."""
    results: list[R] = []
    for index, chunk in enumerate(chunks):
        if before_chunk is not None:
            before_chunk(chunk)
        outcomes: list[R] = []
        error: BaseException | None = None
        for item in chunk:
            if error is not None:
                outcomes.append(skipped(item))
                continue
            try:
                outcomes.append(write(item))
            except Exception as exc:  # recorded, then re-raised
                outcomes.append(failed(item, exc))
                error = exc
        if error is not None:
            outcomes.extend(skipped(item) for later in chunks[index + 1:] for item in later)
            record(outcomes)
            results.extend(outcomes)
            _stopped(error, sum(len(c) for c in chunks[:index + 1]), total)
            raise error
        record(outcomes)
        results.extend(outcomes)
    return results


class _Pipeline(Generic[T, R]):
    """The writes of chunk N+1 queued behind chunk N's on one pool, while chunk N is recorded."""

    def __init__(self, chunks: list[tuple[Hashable, list[T]]], write: Callable[[T], R],
                 failed: Callable[[T, BaseException], R], skipped: Callable[[T], R],
                 record: Callable[[list[R]], None], before_chunk: Callable[[list[T]], None] | None,
                 concurrency: int, total: int) -> None:
        self.chunks = chunks
        self.write = write
        self.failed = failed
        self.skipped = skipped
        self.record = record
        self.before_chunk = before_chunk
        self.concurrency = concurrency
        self.total = total
        self.stop = threading.Event()
        self.sent: dict[int, list[Future[object]]] = {}

    def _guarded(self, item: T) -> object:
        """Run one write unless the run is stopping; a raising write stops the queued ones at once."""
        if self.stop.is_set():
            return _NOT_TRIED
        try:
            return self.write(item)
        except BaseException:
            self.stop.set()
            raise

    def _send(self, pool: ThreadPoolExecutor, index: int) -> None:
        chunk = self.chunks[index][1]
        if self.before_chunk is not None:
            self.before_chunk(chunk)
        self.sent[index] = [pool.submit(self._guarded, item) for item in chunk]

    def _collect(self, index: int) -> tuple[list[R], BaseException | None]:
        """The outcomes of a chunk in plan order once all its writes have ended (never sent: skipped)."""
        chunk = self.chunks[index][1]
        futures = self.sent.pop(index, None)
        if futures is None:
            return [self.skipped(item) for item in chunk], None
        outcomes: list[R] = []
        error: BaseException | None = None
        for item, future in zip(chunk, futures, strict=True):
            try:
                result = future.result()
            except Exception as exc:  # recorded, then re-raised by the caller
                outcomes.append(self.failed(item, exc))
                if error is None:
                    error = exc
                continue
            outcomes.append(self.skipped(item) if result is _NOT_TRIED else result)  # type: ignore[arg-type]
        return outcomes, error

    def run(self) -> list[R]:
        results: list[R] = []
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="3cx-write")
        try:
            for index, (key, _chunk) in enumerate(self.chunks):
                if index not in self.sent:  # the first chunk, or the first of a new phase
                    self._send(pool, index)
                following = index + 1
                unprepared: Exception | None = None
                if following < len(self.chunks) and self.chunks[following][0] == key and not self.stop.is_set():
                    try:
                        self._send(pool, following)  # queued behind this chunk: no gap at the boundary
                    except Exception as exc:  # raised once this chunk is recorded, as if prepared after it
                        unprepared = exc
                outcomes, error = self._collect(index)
                if error is not None:
                    next_sent = following in self.sent
                    rest, _later = self._collect(following) if following < len(self.chunks) else ([], None)
                    outcomes.extend(rest)
                    outcomes.extend(self.skipped(item) for _, later in self.chunks[following + 1:] for item in later)
                    self.record(outcomes)
                    results.extend(outcomes)
                    last = following + 1 if next_sent else following
                    _stopped(error, sum(len(c) for _, c in self.chunks[:last]), self.total)
                    raise error
                self.record(outcomes)  # the next chunk's writes are in flight meanwhile
                results.extend(outcomes)
                if unprepared is not None:
                    raise unprepared
        finally:
            self.stop.set()  # whatever is still queued (record or before_chunk raised) is not sent
            pool.shutdown(wait=True, cancel_futures=True)
        return results
