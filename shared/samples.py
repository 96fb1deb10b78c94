"""Telemetry as a service's input: a sample is taken only from a registered host, sent
under its own subject; anything else is bad input, dead-lettered with the reason."""

from __future__ import annotations

from collections.abc import Collection

from schemas import Envelope, Message
from schemas.host import HostTelemetry
from shared.bus import PoisonMessage


def host_sample(env: Envelope[Message], hosts: Collection[str], taker: str) -> HostTelemetry:
    """The sample, or a PoisonMessage naming what is wrong with it (it is dead-lettered,
    and changes nothing, the emulated clock included)."""
    sample = env.data
    if not isinstance(sample, HostTelemetry):
        raise PoisonMessage(f"the {taker} takes HostTelemetry, not {env.type}")
    if env.subject != sample.aggregate():
        raise PoisonMessage(f"a sample of host {sample.host} sent as {env.subject}")
    if sample.host not in hosts:
        raise PoisonMessage(f"telemetry from unknown host {sample.host}")
    return sample
