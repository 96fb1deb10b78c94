"""What ``vplane ft status`` shows of each pair."""

from __future__ import annotations

from schemas.ft import FtPairView
from services.ft.state import Ft, Pair, Phase


def pair_view(p: Pair, failovers: int) -> FtPairView:
    # A pair that ended holds nothing back: what it held left with its end, or was lost
    # with its primary's host.
    ended = p.phase is Phase.ENDED
    return FtPairView(
        vm=p.vm,
        mode=p.mode,
        phase=p.phase.value,
        primary_host=p.primary_host,
        backup=p.backup,
        backup_host=p.backup_host,
        log_lag=0 if ended else len(p.log),
        entries=p.synced,
        bytes=p.bytes,
        held_outputs=0 if ended else p.held,
        released_outputs=p.released,
        divergences=p.divergences,
        failovers=failovers,
    )


def status(state: Ft) -> list[FtPairView]:
    """The pairs in protection, then those that ended (the latest of each VM)."""
    latest = {p.vm: p for p in state.ended if p.vm not in state.pairs}
    pairs = sorted([*state.pairs.values(), *latest.values()], key=_order)
    return [pair_view(p, state.failovers.get(p.vm, 0)) for p in pairs]


def _order(p: Pair) -> tuple[str, str]:
    return (p.vm, p.backup)
