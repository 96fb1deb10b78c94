"""Group commit: the commands a consumer delivered together, answered in one append.

Each command waits for its group. A group is decided in delivery order, each command
on the state the answers before it leave (the service's ``decide_group``), and its
answers land in one atomic append: one round trip to the log for many commands. The
service may answer only the first few and put the rest off until those have landed
(a command decided on what its hardware holds, which sees an answer once folded). A
command that needs I/O before it is decided (``prepare``) is decided on its own, in
its place. A group that fails for another reason than the broker is decided again one
command at a time, so that a bad command fails alone and its neighbours are answered.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import structlog

from schemas import Envelope, Message
from shared.bus import BusUnavailable
from shared.outcome import Outcome, Outcomes, as_list

if TYPE_CHECKING:
    from shared.runtime import Runtime

log = structlog.get_logger("vplane.runtime")

DecideGroup = Callable[[Sequence[Envelope[Message]]], Awaitable[Outcomes]]
_Waiting = tuple[Envelope[Message], "asyncio.Future[None]"]


class CommandGroups:
    def __init__(self, runtime: Runtime, decide_group: DecideGroup) -> None:
        self._runtime = runtime
        self._decide_group = decide_group
        self._waiting: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None

    async def answer(self, env: Envelope[Message]) -> None:
        """Return once ``env`` is answered in the log; raise what kept it from that."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((env, waiter))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit(), name="command-groups")
        await waiter

    async def _commit(self) -> None:
        # The consumer starts a delivery's handlers in order: let them all queue up.
        await asyncio.sleep(0)
        while self._waiting:
            group, self._waiting = self._waiting, []
            await self._in_order(group)

    async def _in_order(self, group: list[_Waiting]) -> None:
        runtime, d = self._runtime, self._runtime.definition
        together: list[_Waiting] = []
        for env, waiter in group:
            if d.prepare is None:
                together.append((env, waiter))
                continue
            try:
                prepared = await d.prepare(env, runtime.bus)
            except Exception as err:
                _fail([(env, waiter)], err)
                continue
            if prepared is None:
                together.append((env, waiter))
                continue
            await self._together(together)
            together = []
            await _resolve([(env, waiter)], partial(self._alone, env, prepared))
        await self._together(together)

    async def _together(self, group: list[_Waiting]) -> None:
        if not group:
            return
        try:
            await self._settle([env for env, _ in group])
        except BusUnavailable as err:
            _fail(group, err)
            return
        except Exception as err:
            if len(group) == 1:
                _fail(group, err)
                return
            log.warning("a group of commands failed; deciding them one by one", error=str(err))
            decide = self._runtime.definition.decide
            assert decide is not None
            for env, waiter in group:
                await _resolve([(env, waiter)], partial(self._alone, env, partial(decide, env)))
            return
        for _, waiter in group:
            if not waiter.done():
                waiter.set_result(None)

    async def _alone(
        self, env: Envelope[Message], decide: Callable[[], Awaitable[Outcomes]]
    ) -> None:
        runtime = self._runtime
        async with runtime.exclusive():
            if env.id not in runtime.answered:
                await runtime.settle(decide, answers=env.id)
        await runtime.sent()

    async def _settle(self, envs: list[Envelope[Message]]) -> None:
        runtime = self._runtime
        async with runtime.exclusive():
            pending = _distinct(e for e in envs if e.id not in runtime.answered)
            while pending:
                decided: list[Outcome] = []
                await runtime.settle(partial(self._decide, pending, decided))
                causes = {o.cause.id for o in decided if o.cause is not None}
                # An answer with something to log is answered once the log shows it; one
                # with nothing to log, now.
                logged = {o.cause.id for o in decided if o.cause is not None and not _silent(o)}
                runtime.answered.update(e.id for e in pending if e.id in causes - logged)
                # Left over: the commands the service put off until the answers before
                # them landed, and those whose earlier attempt was partly in the log
                # already (decided again on what the log holds).
                rest = [e for e in pending if e.id not in runtime.answered]
                if len(rest) == len(pending):
                    raise RuntimeError(f"no answer for {len(rest)} commands of a group")
                pending = rest
        await runtime.sent()

    async def _decide(self, envs: list[Envelope[Message]], decided: list[Outcome]) -> list[Outcome]:
        """The group's outcomes, kept in ``decided`` too (the last attempt's)."""
        decided[:] = as_list(await self._decide_group(envs))
        return decided


def _silent(outcome: Outcome) -> bool:
    return not (outcome.events or outcome.commands)


def _distinct(envs: Iterable[Envelope[Message]]) -> list[Envelope[Message]]:
    seen: dict[uuid.UUID, Envelope[Message]] = {}
    for env in envs:
        seen.setdefault(env.id, env)
    return list(seen.values())


async def _resolve(group: list[_Waiting], step: Callable[[], Awaitable[None]]) -> None:
    try:
        await step()
    except Exception as err:
        _fail(group, err)
        return
    for _, waiter in group:
        if not waiter.done():
            waiter.set_result(None)


def _fail(group: list[_Waiting], err: Exception) -> None:
    for _, waiter in group:
        if not waiter.done():
            waiter.set_exception(err)
