"""The emulators' injected latency: every request waits at least its latency, requests waking in the
same millisecond share one loop timer, and a cancelled request leaves the others waiting."""

from __future__ import annotations

import asyncio

from emulators.common import faults


def test_concurrent_sleeps_wait_their_latency_share_timers_and_survive_a_cancel() -> None:
    async def scenario() -> tuple[list[float], int, bool]:
        loop = asyncio.get_running_loop()
        timers = 0
        call_at = loop.call_at

        def counting_call_at(*args: object, **kwargs: object) -> asyncio.TimerHandle:
            nonlocal timers
            timers += 1
            return call_at(*args, **kwargs)  # type: ignore[arg-type]

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        started = loop.time()

        async def one() -> float:
            await faults.latency_sleep(0.05)
            return loop.time() - started

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        victim = asyncio.create_task(one())
        await asyncio.sleep(0)
        victim.cancel()
        waited = await asyncio.gather(*tasks)
        return waited, timers, victim.cancelled()

    waited, timers, cancelled = asyncio.run(scenario())
    assert min(waited) >= 0.05 and max(waited) < 0.5
    assert timers <= 3  # 201 requests started within a millisecond or two: a timer per millisecond
    assert cancelled and not faults._WAKE_GROUPS
