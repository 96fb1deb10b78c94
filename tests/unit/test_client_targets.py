"""A command for a host nobody runs is refused at once, not left in a queue for good."""

from __future__ import annotations

import pytest

from schemas.host import CrashHost
from schemas.vm import PowerOffVm
from shared.client import UnknownTarget
from tests.unit.stack import memory_stack


async def test_a_command_for_an_unregistered_host_is_refused_and_not_sent() -> None:
    async with memory_stack(hosts=1) as stack:
        with pytest.raises(UnknownTarget, match=r"unknown-host.*no host nohost"):
            await stack.client.send(CrashHost(host="nohost"))
        with pytest.raises(UnknownTarget):
            await stack.client.send_and_wait(PowerOffVm(vm="a", host="nohost"), timeout=1)
        assert await stack.events(lambda e: "nohost" in e.subject) == []
        # A registered host is not refused (its answer says what it thinks of the command).
        [answer] = await stack.client.send_and_wait(CrashHost(host="h1"), timeout=5)
        assert answer.type == "HostCrashed"
