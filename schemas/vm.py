"""Virtual machine commands and events."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from schemas.base import Command, Event, Name, registry

Priority = Literal["high", "low"]


class VmState(enum.StrEnum):
    OFF = "off"
    ON = "on"


@registry.register
class CreateVm(Command):
    """Create a VM; without ``host`` the hosts service chooses one with room."""

    vm: Name
    cpu: int = Field(ge=1, le=256, description="virtual CPUs")
    mem_mib: int = Field(ge=16, le=4 * 1024 * 1024)
    priority: Priority = "low"
    host: Name | None = None
    power_on: bool = True

    def aggregate(self) -> str:
        return f"host/{self.host}" if self.host else "hosts"


@registry.register
class PowerOnVm(Command):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class PowerOffVm(Command):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class VmCreated(Event):
    vm: Name
    host: Name
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    priority: Priority
    powered_on: bool

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmPoweredOn(Event):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmPoweredOff(Event):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"
