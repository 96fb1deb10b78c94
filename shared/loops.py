"""Supervised loops: a service's own steps, run on a period, restarted when they fail.

A step returns outcomes, which the runtime carries out like any other decision. A step
that raises is logged, counted and tried again after a growing pause; one that keeps
failing stops the service with an error, so that its supervisor (``vplane up``, or
compose's restart policy) starts it again from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from shared.outcome import Outcomes, Plan

log = structlog.get_logger("vplane.runtime")

# Consecutive failures of one loop after which the service gives up.
MAX_FAILURES = 5
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
# The broker is looked for again at least this often while it is away.
BROKER_BACKOFF = 1.0

Step = Callable[[], Awaitable[Outcomes | Plan | None]]


@dataclass(frozen=True)
class Loop:
    """``step`` runs every ``every`` seconds (a step that takes longer delays the next).
    ``exclusive`` steps decide under the service's lock, as commands do."""

    name: str
    step: Step
    every: float
    exclusive: bool = True
    # How long to wait after a step instead of ``every`` (say, until the next round is due).
    pause: Callable[[], float] | None = None
    # Set to run the next step now rather than after the wait (something it waits for
    # has happened): a step waiting on the log need not cost a period per event.
    wake: asyncio.Event | None = None


class LoopFailed(Exception):
    """A loop failed MAX_FAILURES times in a row."""


@dataclass
class LoopStats:
    steps: int = 0
    failures: int = 0
    consecutive: int = 0
    # Failures in a row while the broker was away.
    waits: int = 0


async def supervise(
    loop: Loop,
    run_step: Callable[[Loop], Awaitable[None]],
    stats: LoopStats,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    excused: Callable[[Exception], bool] = lambda _: False,
) -> None:
    """Run ``loop`` until cancelled; raise LoopFailed when it keeps failing. A failure
    ``excused`` says is not the loop's own (its broker is away) is retried and counted,
    but never stops the service: the broker is waited for."""
    while True:
        try:
            await run_step(loop)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            stats.failures += 1
            if excused(err):
                stats.waits += 1
                log.warning("loop waits for the broker", loop=loop.name, error=repr(err))
                await sleep(min(BROKER_BACKOFF, FIRST_BACKOFF * 2 ** (stats.waits - 1)))
                continue
            stats.consecutive += 1
            if stats.consecutive >= MAX_FAILURES:
                log.exception(
                    "loop keeps failing; the service stops",
                    loop=loop.name,
                    failures=stats.consecutive,
                    error=repr(err),
                )
                raise LoopFailed(
                    f"loop {loop.name} failed {stats.consecutive} times: {err!r}"
                ) from err
            pause = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (stats.consecutive - 1))
            log.warning(
                "loop failed; restarting it",
                loop=loop.name,
                failures=stats.consecutive,
                retry_in=pause,
                error=repr(err),
            )
            await sleep(pause)
            continue
        stats.steps += 1
        stats.consecutive = stats.waits = 0
        await _rest(loop, sleep)


async def _rest(loop: Loop, sleep: Callable[[float], Awaitable[None]]) -> None:
    """The wait after a step: its period, cut short when the loop is woken."""
    wait = loop.every if loop.pause is None else loop.pause()
    if loop.wake is None:
        await sleep(wait)
        return
    if not loop.wake.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.wake.wait(), wait)
    loop.wake.clear()
