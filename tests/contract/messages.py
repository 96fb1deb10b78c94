"""Small helpers that build the envelopes the contract tests exchange."""

from __future__ import annotations

from schemas import Envelope
from schemas.host import HostTelemetry
from schemas.vm import CreateVm, VmCreated


def vm_created(vm: str = "web1", host: str = "h1") -> Envelope[VmCreated]:
    data = VmCreated(vm=vm, host=host, cpu=1, mem_mib=256, priority="low", powered_on=True)
    return Envelope.wrap(data, producer="test")


def create_vm(vm: str = "web1") -> Envelope[CreateVm]:
    """A command for the bus alone (sent as ``hosts.CreateVm``, which consumers of
    ``hosts.>`` take): it names no host, so a hosts service would refuse it
    (``no-reservation``). A test that drives the hosts reserves room and names the host
    (tests/reserving.py)."""
    return Envelope.wrap(CreateVm(vm=vm, cpu=1, mem_mib=256), producer="test")


def sample(host: str = "h1", tick: int = 0) -> Envelope[HostTelemetry]:
    data = HostTelemetry(
        host=host,
        tick=tick,
        cpu_capacity_mhz=1000,
        cpu_demand_mhz=10,
        cpu_used_mhz=10,
        mem_capacity_mib=1024,
        mem_reserved_mib=0,
        vms_running=0,
        vms_total=0,
    )
    return Envelope.wrap(data, producer="test")
