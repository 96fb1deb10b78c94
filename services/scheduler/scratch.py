"""Deciding ahead of the log: the decisions of a round, or of a group of commands, are
taken one after another on a scratch fold that each one's events are folded into as it
is taken, so that the next one sees them. The events are wrapped there already, as they
will be appended; once the append lands, the scheduler's fold takes the scratch's (with
the log's sequences) instead of folding the same events a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from types import TracebackType

from schemas import Envelope, Message
from services.scheduler.holder import Holder
from services.scheduler.state import SchedulerState, evolve, sequenced
from shared.effects import envelopes_of
from shared.outcome import Outcome

# The log sequence an event is folded at before it lands: it moves no version, so the
# later reservations of the same decision expect what the log holds (the runtime keeps
# the first expectation per aggregate).
PROVISIONAL = -1


class FoldMismatch(AssertionError):
    """A scratch fold differs from the log's (``check_folds``): a fold step that keeps
    an event's sequence and ``sequenced`` does not know of."""


class Scratch:
    """Used as a context: the holder's state and pool cache are the scratch's inside it,
    and the real ones again after it."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.base = holder.state
        self.real_pools = holder.pools
        self.pools = holder.pools.copy()
        self.state = holder.state
        self.outcomes: list[Outcome] = []
        # Every envelope folded here, in order.
        self.folded: list[Envelope[Message]] = []

    def __enter__(self) -> Scratch:
        self.holder.pools = self.pools
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        h = self.holder
        self.state = h.state
        h.state, h.pools = self.base, self.real_pools

    def take(self, outcome: Outcome | None) -> bool:
        if outcome is None:
            return False
        h = self.holder
        envs = envelopes_of(h.service, outcome, h.clock.now())
        for env in envs:
            h.state = evolve(h.state, PROVISIONAL, env)
        self.folded += envs
        for done in outcome.on_landed:
            done()
        self.outcomes.append(replace(outcome, on_landed=(), envelopes=tuple(envs), folded=self))
        return True

    def landed(self) -> list[Outcome]:
        """The outcomes, the last of them keeping the scratch pool once the round landed,
        if the fold then holds exactly what the round decided on."""
        if not self.outcomes:
            return []
        holder, pools, real_pools = self.holder, self.pools, self.real_pools
        revision = pools.revision

        def keep() -> None:
            if holder.state.ledger.revision == revision and holder.pools is real_pools:
                holder.pools = pools

        last = self.outcomes[-1]
        return [*self.outcomes[:-1], replace(last, on_landed=(*last.on_landed, keep))]

    def adopt(self, entries: Sequence[tuple[int, Envelope[Message]]]) -> bool:
        """Take the scratch fold for the fold of ``entries``: only if the real fold is
        still the one the scratch began from, and the entries hold every envelope folded
        here, in order. Others among them (the runtime's outbox records) are folded."""
        h = self.holder
        if h.state is not self.base:
            return False
        state, mine = self.state, iter(self.folded)
        expected = next(mine, None)
        others: list[tuple[int, Envelope[Message]]] = []
        for seq, env in entries:
            if env is expected:
                state = sequenced(state, seq, env)
                expected = next(mine, None)
            else:
                others.append((seq, env))
        if expected is not None:
            return False
        for seq, env in others:
            state = evolve(state, seq, env)
        if h.knobs.check_folds:
            _check(self.base, entries, state)
        h.state = state
        return True


def _check(
    base: SchedulerState, entries: Sequence[tuple[int, Envelope[Message]]], adopted: SchedulerState
) -> None:
    folded = base
    for seq, env in entries:
        folded = evolve(folded, seq, env)
    differ = [f.name for f in fields(folded) if getattr(folded, f.name) != getattr(adopted, f.name)]
    if differ:
        raise FoldMismatch(
            f"the scratch fold of {[e.type for _, e in entries]} differs in {differ}"
        )
