"""The emulated hosts' shape: the same for every host of a process, its cores set."""

from __future__ import annotations

from schemas.queries import HostList, ListHosts
from tests.unit.stack import memory_stack


async def test_hosts_have_the_cores_the_settings_give_them() -> None:
    """VPLANE_HOST_CPU_CORES sizes each host's CPU (16 cores by default)."""
    async with memory_stack(hosts=2, host_cpu_cores=32) as stack:
        hosts = await stack.client.query(ListHosts())
        assert isinstance(hosts, HostList)
        assert [(h.host, h.cpu_cores) for h in hosts.hosts] == [("h1", 32), ("h2", 32)]
