"""What a workload asks for: its size (desired and minimum) and its placement rules.

Requests are checked when they are made: an absurd size raises ``AbsurdRequest`` and
rules that ask to be both near and away from one name raise ``ContradictoryRules``,
before any pool is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scheduler.core.errors import AbsurdRequest, ContradictoryRules
from services.scheduler.core.resources import F64, Resources, vm_size_problem


@dataclass(frozen=True, slots=True)
class Affinity:
    """Names to be near (affinity) or away from (anti-affinity). ``must`` names filter hosts
    out; ``should`` names only move the score."""

    must: frozenset[str] = frozenset()
    should: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        return self.must | self.should

    def __bool__(self) -> bool:
        return bool(self.must or self.should)


@dataclass(frozen=True, slots=True)
class Rules:
    """VM-VM rules name other VMs (affinity: on the same host as each placed one; anti:
    on none of their hosts); VM-host rules name hosts. A VM not placed yet constrains
    nothing, so the first of a pair goes anywhere and the second follows it."""

    vm_affinity: Affinity = field(default_factory=Affinity)
    vm_anti_affinity: Affinity = field(default_factory=Affinity)
    host_affinity: Affinity = field(default_factory=Affinity)
    host_anti_affinity: Affinity = field(default_factory=Affinity)

    def __post_init__(self) -> None:
        for kind, near, away in (
            ("VM", self.vm_affinity, self.vm_anti_affinity),
            ("host", self.host_affinity, self.host_anti_affinity),
        ):
            both = near.names & away.names
            if both:
                raise ContradictoryRules(
                    f"{kind} affinity and anti-affinity both name {', '.join(sorted(both))}"
                )

    def each(self) -> tuple[Affinity, Affinity, Affinity, Affinity]:
        return (
            self.vm_affinity,
            self.vm_anti_affinity,
            self.host_affinity,
            self.host_anti_affinity,
        )

    def __bool__(self) -> bool:
        return any(self.each())

    @property
    def has_must(self) -> bool:
        return any(a.must for a in self.each())

    @property
    def has_should(self) -> bool:
        return any(a.should for a in self.each())


NO_RULES = Rules()


@dataclass(frozen=True, slots=True)
class Request:
    """Place VM ``vm`` at ``desired`` size, or, when no host has room for that, at less
    on the best host, never below ``minimum`` (``None``: the desired size or nothing).
    CPU and memory must be positive; network and storage may be zero (not asked for)."""

    vm: str
    desired: Resources
    minimum: Resources | None = None
    group: str = ""  # the spread group, for the spread policy
    rules: Rules = NO_RULES

    def __post_init__(self) -> None:
        if not self.vm:
            raise AbsurdRequest("a request needs a VM name")
        _check_size(self.vm, "desired", self.desired)
        if self.minimum is not None:
            _check_size(self.vm, "minimum", self.minimum)
            above = [
                name
                for name, low, high in zip(
                    ("cpu", "memory", "network", "storage"),
                    self.minimum.amounts(),
                    self.desired.amounts(),
                    strict=True,
                )
                if low > high
            ]
            if above:
                raise AbsurdRequest(f"VM {self.vm}: minimum {', '.join(above)} above desired")
        if self.vm in self.rules.vm_affinity.names | self.rules.vm_anti_affinity.names:
            raise ContradictoryRules(f"VM {self.vm}: a rule names the VM itself")

    @property
    def can_degrade(self) -> bool:
        return self.minimum is not None and self.minimum != self.desired

    def sizes(self) -> tuple[F64, F64]:
        """(desired, minimum) as (4,) vectors."""
        desired = self.desired.vector()
        return desired, desired if self.minimum is None else self.minimum.vector()


def _check_size(vm: str, what: str, size: Resources) -> None:
    problem = vm_size_problem(size)
    if problem is not None:
        raise AbsurdRequest(f"VM {vm}: {what} {size}: {problem}")
