"""How the hosts that passed the filters are ranked: a policy score in [0, 1], plus or
minus ``SHOULD_WEIGHT`` per should-rule, plus (degraded placements only) the share of
the desired size a host can grant. Higher is better; ties go to the lower host row."""

from __future__ import annotations

import enum

import numpy as np

from services.scheduler.core.pool import Pool
from services.scheduler.core.requests import Rules
from services.scheduler.core.resources import F64


class Policy(enum.StrEnum):
    BALANCED = "balanced"  # least loaded after placement: lowest busiest-resource utilisation
    BINPACK = "binpack"  # most loaded after placement (mean utilisation) that still fits
    SPREAD = "spread"  # fewest VMs of the request's group (or of all), then most free


# Larger than the span of every other term together (policy <= 1, grant share <= 1), so
# one should-rule met or broken outweighs any difference in policy or grant.
SHOULD_WEIGHT = 3.0


def policy_scores(policy: Policy, pool: Pool, size: F64, group: str = "") -> F64:
    """Every host's score if ``size`` ((4, 1), or (4, hosts) for one size per host) were
    placed on it; only the scores of hosts that passed the filters mean anything."""
    score: F64
    free_after = (pool.free - size) * pool.inv_capacity
    if policy is Policy.SPREAD:
        count = pool.vms.group_count(group)
        most = count.max(initial=0)
        # Lexicographic: fewer group VMs first, then the free share (< 1 once size > 0).
        score = (most - count + free_after.mean(axis=0)) / (most + 1)
        return score
    used_after = pool.present - free_after
    score = used_after.mean(axis=0) if policy is Policy.BINPACK else 1.0 - used_after.max(axis=0)
    return score


def should_scores(pool: Pool, rules: Rules) -> F64 | None:
    """Per host, SHOULD_WEIGHT for each should-rule it meets, minus it for each it
    breaks; ``None`` when the request has no should-rule."""
    if not rules.has_should:
        return None
    bonus = np.zeros(len(pool))
    np.add.at(bonus, pool.rows(rules.host_affinity.should), SHOULD_WEIGHT)
    np.add.at(bonus, pool.rows(rules.host_anti_affinity.should), -SHOULD_WEIGHT)
    np.add.at(bonus, pool.vms.hosts_of(rules.vm_affinity.should), SHOULD_WEIGHT)
    np.add.at(bonus, pool.vms.hosts_of(rules.vm_anti_affinity.should), -SHOULD_WEIGHT)
    return bonus


def grant_share(granted: F64, desired: F64) -> F64:
    """Mean share of the desired size granted, over the resources asked for."""
    asked = desired > 0
    share: F64 = (granted[asked] / desired[asked, None]).mean(axis=0)
    return share
