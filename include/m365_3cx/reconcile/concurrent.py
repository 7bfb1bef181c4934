"""Bounded concurrent 3CX writes, with every outcome recorded chunk by chunk.

The apply steps write one record per request (the XAPI has no batch create or update).
:func:`run_chunked` sends up to ``concurrency`` of them at once over the client's one shared
token (:class:`~m365_3cx.threecx.client.ThreeCXClient` is thread safe: one session per thread,
the token behind a lock; 429/503 with ``Retry-After`` are retried per request by the transport).

Crash safety is kept per chunk: ``before_chunk`` runs (and commits) before any write of the chunk
is sent (the phonebook records its *pending* entries there, so a create whose answer is lost is
re-linked by its tag), and ``record`` receives the chunk's outcomes in plan order as soon as the
chunk is done. A task that dies mid-chunk leaves at most one chunk of writes unrecorded; their plan
rows stay open, and the next snapshot sees what reached 3CX. A retriable error (the transport has
already retried) stops the run: writes already in flight finish and are recorded as they ended,
writes not started yet and every later change are recorded as skipped, then the error is re-raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Changes whose outcomes are recorded together (one transaction of bulk statements).
CHUNK_SIZE: Final = 100


def _segments(items: Sequence[T], key: Callable[[T], Hashable] | None, size: int) -> Iterator[list[T]]:
    """Consecutive chunks of at most ``size`` items; a chunk never mixes two values of ``key``."""
    chunk: list[T] = []
    current: Hashable = None
    for item in items:
        k = key(item) if key is not None else None
        if chunk and (len(chunk) >= size or k != current):
            yield chunk
            chunk = []
        current = k
        chunk.append(item)
    if chunk:
        yield chunk


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
    :param record: stores a chunk's outcomes (in plan order); called once per chunk.
    :param before_chunk: runs before the first write of each chunk (e.g. records pending creates).
    :param concurrency: writes in flight at once (1 = one after the other, in the caller's thread).
    :param chunk_size: items per chunk.
    :param phase: chunks never mix items with different values (e.g. the action: all deletes of a
        plan run after its creates, as the plan orders them).
    :return: every outcome, in plan order.
    :raises Exception: the first exception ``write`` raised, after recording every outcome.
    """
    if concurrency < 1 or chunk_size < 1:
        raise ValueError("concurrency and chunk_size must be at least 1")
    chunks = list(_segments(items, phase, chunk_size))
    results: list[R] = []
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="3cx-write") if concurrency > 1 else None
    try:
        for index, chunk in enumerate(chunks):
            if before_chunk is not None:
                before_chunk(chunk)
            outcomes, error = _run_chunk(chunk, write, failed, skipped, pool)
            if error is not None:
                tried = sum(len(c) for c in chunks[:index]) + len(chunk)
                for later in chunks[index + 1:]:
                    outcomes.extend(skipped(item) for item in later)
                record(outcomes)
                results.extend(outcomes)
                log.warning("3CX apply stopped after an error (%d of %d changes sent or queued): %s",
                            tried, len(items), type(error).__name__)
                raise error
            record(outcomes)
            results.extend(outcomes)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _run_chunk(
    chunk: list[T],
    write: Callable[[T], R],
    failed: Callable[[T, BaseException], R],
    skipped: Callable[[T], R],
    pool: ThreadPoolExecutor | None,
) -> tuple[list[R], BaseException | None]:
    outcomes: list[R] = []
    error: BaseException | None = None
    if pool is None:
        for item in chunk:
            if error is not None:
                outcomes.append(skipped(item))
                continue
            try:
                outcomes.append(write(item))
            except Exception as exc:  # recorded, then re-raised by the caller
                outcomes.append(failed(item, exc))
                error = exc
        return outcomes, error
    futures: list[Future[R]] = [pool.submit(write, item) for item in chunk]
    for item, future in zip(chunk, futures, strict=True):
        if error is not None and future.cancel():
            outcomes.append(skipped(item))
            continue
        try:
            outcomes.append(future.result())
        except Exception as exc:  # recorded, then re-raised by the caller
            outcomes.append(failed(item, exc))
            if error is None:
                error = exc
                for rest in futures:
                    rest.cancel()
    return outcomes, error


__all__ = ["CHUNK_SIZE", "run_chunked"]
