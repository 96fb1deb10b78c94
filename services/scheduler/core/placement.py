"""One placement decision, filter then score over all hosts at once, and batches of them.

``decide`` is pure: it reads a pool and returns a ``Decision`` that carries everything
an event needs to explain itself. ``commit`` reserves a decision's grant in place;
``place_many`` does both for a batch, in order, on a copy of the pool.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.scheduler.core.errors import AbsurdRequest
from services.scheduler.core.filters import FILTERS, Filter, FilterCount, fits, screen
from services.scheduler.core.pool import Pool
from services.scheduler.core.requests import Request
from services.scheduler.core.resources import F64, Index, Resources
from services.scheduler.core.scoring import Policy, grant_share, policy_scores, should_scores

RUNNERS_UP = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    host: str
    score: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a VM goes and why. Refused: ``host`` is ``None`` and ``reason`` names the
    filter that left no host. ``filters`` has every filter's removal count, in order;
    ``candidates`` is how many hosts passed them all."""

    vm: str
    policy: Policy
    host: str | None
    row: int | None
    granted: Resources | None
    degraded: bool  # granted less than desired (never less than the minimum)
    score: float | None
    runners_up: tuple[Candidate, ...]
    filters: tuple[FilterCount, ...]
    candidates: int
    reason: Filter | None = None

    @property
    def placed(self) -> bool:
        return self.row is not None

    @classmethod
    def refused(
        cls, vm: str, policy: Policy, filters: tuple[FilterCount, ...], reason: Filter
    ) -> Decision:
        return cls(
            vm=vm,
            policy=policy,
            host=None,
            row=None,
            granted=None,
            degraded=False,
            score=None,
            runners_up=(),
            filters=filters,
            candidates=0,
            reason=reason,
        )


@dataclass(frozen=True, slots=True)
class Batch:
    decisions: tuple[Decision, ...]
    pool: Pool  # the pool given, with every placement reserved


def decide(pool: Pool, request: Request, policy: Policy = Policy.BALANCED) -> Decision:
    """Filter and score every host for ``request``; the pool is not changed."""
    desired, minimum = request.sizes()
    screened = screen(pool, request.rules)
    fit = screened.mask & fits(pool.free, desired)
    degraded = False
    if screened.left and request.can_degrade and not fit.any():
        fit = screened.mask & fits(pool.free, minimum)
        degraded = True
    hosts = np.flatnonzero(fit)
    counts = (*screened.removed, screened.left - len(hosts))
    filters = _counted(counts)
    if not len(hosts):
        return Decision.refused(request.vm, policy, filters, _emptied(pool, counts))

    size = np.minimum(desired[:, None], pool.free) if degraded else desired[:, None]
    every = policy_scores(policy, pool, size, request.group)
    if degraded:
        every += grant_share(size, desired)
    bonus = should_scores(pool, request.rules)
    if bonus is not None:
        every += bonus
    score = every[hosts]

    ranked = _best(score, RUNNERS_UP + 1)
    first = int(ranked[0])
    row = int(hosts[first])
    return Decision(
        vm=request.vm,
        policy=policy,
        host=pool.names[row],
        row=row,
        granted=Resources.of(size[:, row] if degraded else desired),
        degraded=degraded,
        score=float(score[first]),
        runners_up=tuple(Candidate(pool.names[int(hosts[i])], float(score[i])) for i in ranked[1:]),
        filters=filters,
        candidates=len(hosts),
    )


@functools.lru_cache(maxsize=4096)
def _counted(counts: tuple[int, ...]) -> tuple[FilterCount, ...]:
    """What each filter removed, one per filter: the same few counts come over and over,
    and are made once."""
    return tuple(FilterCount(f, n) for f, n in zip(FILTERS, counts, strict=True))


def commit(pool: Pool, request: Request, decision: Decision) -> None:
    """Reserve ``decision``'s grant for ``request`` on ``pool``, in place (a refusal
    reserves nothing)."""
    if decision.row is not None and decision.granted is not None:
        pool.add_vm(request.vm, decision.row, decision.granted.vector(), request.group)


def place_many(pool: Pool, requests: Sequence[Request], policy: Policy = Policy.BALANCED) -> Batch:
    """Decide and reserve each request in order on a copy of ``pool``: a request sees
    what the earlier ones took, and may follow or avoid the VMs they placed."""
    twice = [vm for vm, n in Counter(r.vm for r in requests).items() if n > 1]
    placed = [r.vm for r in requests if r.vm in pool.vms]
    if twice or placed:
        raise AbsurdRequest(f"VMs asked for twice {twice} or already placed {placed}")
    work = pool.copy()
    decisions = []
    for request in requests:
        decision = decide(work, request, policy)
        commit(work, request, decision)
        decisions.append(decision)
    return Batch(tuple(decisions), work)


def _best(score: F64, count: int) -> Index:
    """Positions of the ``count`` highest scores, best first, ties to the lower position."""
    if len(score) > count:
        cut = np.partition(score, len(score) - count)[len(score) - count]
        top = np.flatnonzero(score >= cut)
    else:
        top = np.arange(len(score))
    return top[np.lexsort((top, -score[top]))][:count]


def _emptied(pool: Pool, counts: Sequence[int]) -> Filter:
    left = len(pool)
    for f, removed in zip(FILTERS, counts, strict=True):
        left -= removed
        if left == 0:
            return f
    return Filter.STATE  # an empty pool: no host was ever in the running
