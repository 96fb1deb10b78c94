"""The FT service's state, folded from the log: what a refusal of an ended pair's
command does to the pair after it."""

from __future__ import annotations

from uuid import uuid4

from schemas import Envelope
from schemas.ft import FtMode, ProtectionEnded, ProtectionRequested
from schemas.memory import RunVm
from schemas.service import CommandRejected, CommandsIssued, RejectionCode
from services.ft.state import Ft, evolve


def protection(backup: str) -> Envelope[ProtectionRequested]:
    requested = ProtectionRequested(
        vm="web", mode=FtMode.RECORD_REPLAY, primary_host="h1", backup=backup, epoch_ms=25
    )
    return Envelope.wrap(requested, producer="ft")


def test_a_refusal_of_an_ended_pairs_command_leaves_the_next_pair_alone() -> None:
    """The backup's host went down with a replay for it in flight; the pair ended and a
    new one began. The host's refusal of that replay, read afterwards, is the old
    pair's: the new pair goes on."""
    replay = Envelope.wrap(RunVm(host="h2", vm="web-ft1", seconds=0, tag="r"), producer="ft")
    state = evolve(Ft(), protection("web-ft1"))
    record = CommandsIssued(service="ft", commands=[replay.encode().decode()], batch=uuid4())
    state = evolve(state, Envelope.wrap(record, producer="ft"))
    assert state.commands[replay.id] == ("web", "web-ft1")
    ended = ProtectionEnded(vm="web", reason="the backup's host h2 was lost", backup="web-ft1")
    state = evolve(state, Envelope.wrap(ended, producer="ft"))
    state = evolve(state, protection("web-ft2"))
    refused = CommandRejected.of(replay, RejectionCode.HOST_DOWN, "host h2 is down")
    state = evolve(state, Envelope.wrap(refused, producer="hosts"))
    assert state.pairs["web"].backup == "web-ft2"
    assert state.pairs["web"].failure is None
