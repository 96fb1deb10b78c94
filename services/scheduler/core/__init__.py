"""The schedulers' pure placement core: a pool snapshot as structure-of-arrays, filter
then score over every host at once, explained decisions, HA spare, maintenance and
rebalancing plans. No I/O: the services build a ``Pool`` from their ledger and turn the
results into events.
"""

from services.scheduler.core.errors import (
    AbsurdRequest,
    ContradictoryRules,
    EvacuationDoesNotFit,
    InsufficientCapacity,
    InvalidPool,
    LastUsableHost,
    MaintenanceRefused,
    SchedulerError,
    SpareUncoverable,
    UnknownName,
)
from services.scheduler.core.filters import Filter, FilterCount
from services.scheduler.core.inventory import Host, HostState, PlacedVm
from services.scheduler.core.maintenance import (
    Evacuation,
    EvacuationCost,
    cheapest_to_evacuate,
    plan_evacuation,
)
from services.scheduler.core.moves import Move
from services.scheduler.core.placement import (
    Batch,
    Candidate,
    Decision,
    commit,
    decide,
    place_many,
)
from services.scheduler.core.pool import Pool
from services.scheduler.core.rebalance import Rebalance, load_spread, propose_rebalance
from services.scheduler.core.requests import Affinity, Request, Rules
from services.scheduler.core.resources import Resource, Resources
from services.scheduler.core.scoring import SHOULD_WEIGHT, Policy
from services.scheduler.core.spare import Spare, ha_spare

__all__ = [
    "SHOULD_WEIGHT",
    "AbsurdRequest",
    "Affinity",
    "Batch",
    "Candidate",
    "ContradictoryRules",
    "Decision",
    "Evacuation",
    "EvacuationCost",
    "EvacuationDoesNotFit",
    "Filter",
    "FilterCount",
    "Host",
    "HostState",
    "InsufficientCapacity",
    "InvalidPool",
    "LastUsableHost",
    "MaintenanceRefused",
    "Move",
    "PlacedVm",
    "Policy",
    "Pool",
    "Rebalance",
    "Request",
    "Resource",
    "Resources",
    "Rules",
    "SchedulerError",
    "Spare",
    "SpareUncoverable",
    "UnknownName",
    "cheapest_to_evacuate",
    "commit",
    "decide",
    "ha_spare",
    "load_spread",
    "place_many",
    "plan_evacuation",
    "propose_rebalance",
]
