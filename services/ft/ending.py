"""How an FT pair ends: the outputs its backup had not confirmed, the end itself, and
its primary resumed if it was suspended for a copy or an epoch."""

from __future__ import annotations

from schemas import Command, Event
from schemas.ft import OutputsReleased, ProtectionEnded
from schemas.vm import UnstunVm
from services.ft.state import Pair


def ending(p: Pair, reason: str, *, release: bool = False) -> tuple[list[Event], list[Command]]:
    """What ends a pair: ProtectionEnded (after, with ``release``, the outputs its backup
    had not confirmed), and the primary resumed if it was suspended."""
    released = held_outputs(p) if release else []
    resume: list[Command] = [UnstunVm(host=p.primary_host, vm=p.vm)] if suspended(p) else []
    return [*released, ProtectionEnded(vm=p.vm, reason=reason, backup=p.backup)], resume


def held_outputs(p: Pair) -> list[Event]:
    """The outputs of the logged runs the backup has not confirmed, as one release."""
    if not p.log:
        return []
    held = [o for entry in p.log for o in entry.ran.outputs][p.released_prefix :]
    released = OutputsReleased(
        vm=p.vm,
        entry=p.log[0].index,
        first_step=p.log[0].ran.first_step,
        steps=sum(e.ran.steps for e in p.log),
        released=held,
    )
    return [released]


def suspended(p: Pair) -> bool:
    """Stunned for a state copy (an epoch's stun and resume go in one batch)."""
    return "stun" in p.asked and "unstun" not in p.asked
