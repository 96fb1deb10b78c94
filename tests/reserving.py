"""A stand-in for the schedulers, for tests that drive the hosts directly: a host changes
what it runs only within a reservation in the ledger, so such a test reserves first, as
a scheduler would, and then sends its command."""

from __future__ import annotations

from schemas import Command, Envelope, Message
from schemas.ha import RestartVm
from schemas.pool import MHZ_PER_VCPU, CapacityReserved, Owner
from schemas.transfers import StartMigration
from schemas.vm import CreateVm, ResizeVm
from services.hosts.state import Fleet, evolve
from services.scheduler.state import incoming
from shared.bus import Bus
from shared.client import Client

# Who the reservations of these tests are said to come from.
PRODUCER = "scheduler-low"


def reservation(
    vm: str,
    host: str,
    cpu: int,
    mem_mib: int,
    *,
    name: str | None = None,
    purpose: str = "vm",
) -> CapacityReserved:
    return CapacityReserved(
        host=host,
        reservation=name or vm,
        workload=vm,
        owner=Owner.LOW,
        purpose=purpose,
        cpu_mhz=cpu * MHZ_PER_VCPU,
        mem_mib=mem_mib,
    )


def covering(fleet: Fleet, cmd: Message) -> CapacityReserved | None:
    """The reservation a scheduler would have made before sending ``cmd`` (None when
    ``cmd`` needs none, or names what ``fleet`` does not hold)."""
    match cmd:
        case CreateVm(host=str() as host):
            return reservation(cmd.vm, host, cmd.cpu, cmd.mem_mib)
        case RestartVm():
            return reservation(cmd.vm, cmd.host, cmd.cpu, cmd.mem_mib)
        case ResizeVm() if (vm := fleet.vms.get(cmd.vm)) is not None:
            # A shrink keeps the room it had until it is done.
            cpu, mem = max(cmd.cpu or vm.cpu, vm.cpu), max(cmd.mem_mib or vm.mem_mib, vm.mem_mib)
            return reservation(cmd.vm, cmd.host, cpu, mem)
        case StartMigration() if (vm := fleet.vms.get(cmd.vm)) is not None:
            return reservation(
                vm.name,
                cmd.target,
                vm.cpu,
                vm.mem_mib,
                name=incoming(cmd.migration),
                purpose="migration",
            )
    return None


def reserved(fleet: Fleet, cmd: Message) -> Fleet:
    """``fleet`` with the reservation ``cmd`` needs folded in."""
    held = covering(fleet, cmd)
    return fleet if held is None else evolve(fleet, held)


async def reserve(bus: Bus, *held: CapacityReserved) -> None:
    """Append reservations to the log, as a scheduler does before it sends its command."""
    for r in held:
        await bus.append(Envelope.wrap(r, producer=PRODUCER))


async def reserve_for(bus: Bus, fleet: Fleet, cmd: Command) -> None:
    if (held := covering(fleet, cmd)) is not None:
        await reserve(bus, held)


async def create(client: Client, cmd: CreateVm, *, timeout: float = 10.0) -> Envelope[Message]:
    """Reserve room for ``cmd`` (which names its host) and create the VM: its first answer."""
    await reserve_for(client.bus, Fleet(), cmd)
    [answer] = await client.send_and_wait(cmd, timeout=timeout)
    return answer
