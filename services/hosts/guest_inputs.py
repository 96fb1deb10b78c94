"""The world outside a recorded guest: the packets, timer values and device completions
that reach it in a step.

They come from the operating system's entropy pool and its clock, not from any seed: nothing
in the stack's log or settings can work them out, so a backup can follow its primary only
by being given them (record/replay), or by being given the memory they made (checkpoints).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

from schemas.vm import GuestInputs
from services.hosts.memory.execution import MAX_PAYLOAD, GuestInput, InputKind

# Draws from os.urandom.
_ENTROPY = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class InputDriver:
    """Per step: ``packets`` packets on average (arriving as a Poisson process does), of
    64..``max_packet`` random bytes; a timer read with chance ``timer_share``, a device
    completion with chance ``device_share``."""

    packets: float = 2.0
    max_packet: int = 512
    timer_share: float = 0.5
    device_share: float = 0.25

    def __post_init__(self) -> None:
        if self.packets < 0 or not 64 <= self.max_packet <= MAX_PAYLOAD:
            raise ValueError(f"not an input driver: {self}")
        if not (0 <= self.timer_share <= 1 and 0 <= self.device_share <= 1):
            raise ValueError(f"shares are 0..1: {self}")

    def draw(self, step: int) -> list[GuestInput]:
        """What reaches the guest in step ``step``, in the order it arrives."""
        drawn = [
            GuestInput(step, InputKind.PACKET, os.urandom(_ENTROPY.randint(64, self.max_packet)))
            for _ in range(_arrivals(self.packets))
        ]
        if _ENTROPY.random() < self.timer_share:
            drawn.append(GuestInput(step, InputKind.TIMER, time.time_ns().to_bytes(8, "little")))
        if _ENTROPY.random() < self.device_share:
            drawn.append(GuestInput(step, InputKind.DEVICE, os.urandom(8)))
        return drawn


def driver_of(inputs: GuestInputs, seconds: float) -> InputDriver:
    """The driver of a guest given ``inputs``, for steps of ``seconds`` emulated seconds."""
    return InputDriver(packets=inputs.packets_per_s * seconds, max_packet=inputs.max_packet)


def _arrivals(mean: float) -> int:
    """How many arrivals of a Poisson process of ``mean`` fall in one step."""
    count, at = 0, 0.0
    if mean <= 0:
        return 0
    while True:
        at += _ENTROPY.expovariate(mean)
        if at >= 1.0:
            return count
        count += 1
