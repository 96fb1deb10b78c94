"""Elastic scratch space on each host: temporary data (shuffle, spill) of its VMs.

A host's VMs share one pool of scratch space; each takes extents of it on demand, under
its quota, and gives them back per tag (a job, a task) or all at once. The host takes a
VM's space back by itself when the VM is destroyed or migrates away: that follows from
those events, so no scratch event says it.
"""

from __future__ import annotations

from pydantic import Field

from schemas.base import Command, Event, Name, registry

# A bound that keeps sums of MiB far from any overflow in a consumer: 1 PiB.
MAX_MIB = 1024**3


class _ScratchCommand(Command):
    host: Name
    vm: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


class _ScratchEvent(Event):
    host: Name
    vm: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class AllocateScratch(_ScratchCommand):
    """Give ``vm`` another extent of ``mib`` under ``tag``. ``quota_mib`` sets its quota
    (at most the pool); without it the VM keeps its quota, at first a quarter of the pool."""

    tag: Name
    mib: int = Field(gt=0, le=MAX_MIB)
    quota_mib: int | None = Field(None, ge=0, le=MAX_MIB)


@registry.register
class ReleaseScratch(_ScratchCommand):
    """Free ``vm``'s extents under ``tag``, or all of its scratch space when no tag is given."""

    tag: Name | None = None


@registry.register
class ScratchAllocated(_ScratchEvent):
    tag: Name
    mib: int = Field(gt=0)
    extent: int = Field(ge=0, description="the new extent's number; never reused on this host")
    quota_mib: int = Field(ge=0, description="the VM's quota from now on")
    used_mib: int = Field(ge=0, description="all the VM's scratch space on the host now")
    pool_used_mib: int = Field(ge=0, description="the host's pool in use now, by all its VMs")


@registry.register
class ScratchReleased(_ScratchEvent):
    tag: Name | None = Field(None, description="the tag freed; none when all the VM's space was")
    mib: int = Field(ge=0, description="the space freed")
    pool_used_mib: int = Field(ge=0, description="the host's pool in use now, by all its VMs")
