"""The placement core's one root exception and the typed refusals under it."""


class SchedulerError(ValueError):
    """Anything the placement core refuses to do."""


class InvalidPool(SchedulerError):
    """Hosts or placed VMs the pool cannot be built from (duplicate or unknown names, ...)."""


class AbsurdRequest(SchedulerError):
    """A request no pool could satisfy: zero or negative sizes, a minimum above the desire."""


class ContradictoryRules(SchedulerError):
    """A request's rules ask to be both near and away from the same VM or host."""


class InsufficientCapacity(SchedulerError):
    """A reservation larger than the host's free capacity (the pool never over-commits)."""


class SpareUncoverable(SchedulerError):
    """HA spare for as many failures as there are usable hosts: nowhere left to restart."""


class MaintenanceRefused(SchedulerError):
    """A host cannot enter maintenance."""


class LastUsableHost(MaintenanceRefused):
    """The host is the pool's last usable one: its VMs would have nowhere to go."""


class EvacuationDoesNotFit(MaintenanceRefused):
    """Some of the host's VMs fit on no other usable host."""


class UnknownName(SchedulerError):
    """A host or VM name the pool does not hold."""
