"""Pre-copy's decisions between rounds: go on, throttle the guest, switch over, or give up.

After each round the coordinator knows what the round sent and how many pages the
guest dirtied meanwhile. It switches over once those can be sent within the downtime
limit. Auto-converge follows QEMU's: when a round's dirtied bytes exceed half the bytes
it sent, twice running, the guest is throttled (20 % of its CPU time held at first, 10
points more each time after, at most 99 %); once throttling is at its maximum and the
rounds still do not fit, the migration is abandoned and the VM runs on at the source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.migration.precopy_model import PAGE_BYTES

# The vCPUs' registers and the device models, sent with the last pages (QEMU's non-RAM
# sections come to a few hundred KiB).
DEVICE_STATE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    bytes_per_s: float
    downtime_s: float = 0.3
    max_rounds: int = 60
    # QEMU's cpu-throttle-initial, cpu-throttle-increment, max-cpu-throttle and
    # throttle-trigger-threshold, as fractions.
    throttle_initial: float = 0.2
    throttle_increment: float = 0.1
    throttle_max: float = 0.99
    trigger: float = 0.5
    # Rounds that may still miss the limit with the throttle at its maximum.
    rounds_at_max: int = 3
    # Sent with the last pages while the guest is stopped.
    device_bytes: int = 0


@dataclass(frozen=True, slots=True)
class RoundSent:
    """What one round put on the wire, and what the guest dirtied while it did."""

    pages: int
    wire_bytes: int
    dirtied: int


@dataclass(frozen=True, slots=True)
class Progress:
    rounds: tuple[RoundSent, ...] = ()
    # The share of the guest's CPU time held back (QEMU's throttle percentage / 100).
    throttle: float = 0.0
    dirty_high: int = 0
    missed_at_max: int = 0

    def after(self, sent: RoundSent, limits: Limits) -> Progress:
        # As QEMU's: the bytes dirtied (whole pages) against the bytes the round sent.
        high = sent.dirtied * PAGE_BYTES > limits.trigger * sent.wire_bytes
        at_max = self.throttle >= limits.throttle_max
        return replace(
            self,
            rounds=(*self.rounds, sent),
            dirty_high=self.dirty_high + 1 if high else 0,
            missed_at_max=self.missed_at_max + 1 if at_max else 0,
        )

    def expected_downtime_s(self, limits: Limits) -> float:
        """The time to send what the last round left dirty, with the device state. A page
        the guest wrote is counted whole: that the round before sent many zero pages
        as markers says nothing of the pages written since."""
        if not self.rounds:
            return float("inf")
        last = self.rounds[-1]
        return (last.dirtied * PAGE_BYTES + limits.device_bytes) / limits.bytes_per_s


@dataclass(frozen=True, slots=True)
class NextRound:
    pass


@dataclass(frozen=True, slots=True)
class Throttle:
    throttle: float

    @property
    def cpu_cap(self) -> float:
        """What the host is asked for: the share of the vCPUs the guest keeps."""
        return round(1.0 - self.throttle, 6)


@dataclass(frozen=True, slots=True)
class Switchover:
    expected_downtime_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


Step = NextRound | Throttle | Switchover | GiveUp


def next_step(progress: Progress, limits: Limits) -> Step:
    """What to do once the last round of ``progress`` has been sent."""
    expected = progress.expected_downtime_s(limits)
    if expected <= limits.downtime_s:
        return Switchover(expected)
    if progress.missed_at_max > limits.rounds_at_max:
        return GiveUp(
            f"did not converge: {expected * 1000:.0f} ms of dirty pages left after "
            f"{len(progress.rounds)} rounds with the guest throttled "
            f"{limits.throttle_max:.0%}, limit {limits.downtime_s * 1000:.0f} ms"
        )
    if len(progress.rounds) >= limits.max_rounds:
        return GiveUp(
            f"did not converge in {limits.max_rounds} rounds: {expected * 1000:.0f} ms "
            f"of dirty pages left, limit {limits.downtime_s * 1000:.0f} ms"
        )
    if progress.dirty_high >= 2 and progress.throttle < limits.throttle_max:
        step = limits.throttle_initial if progress.throttle == 0 else limits.throttle_increment
        return Throttle(min(limits.throttle_max, round(progress.throttle + step, 6)))
    return NextRound()


def throttled(progress: Progress, step: Throttle) -> Progress:
    """``progress`` once the guest runs at ``step``'s throttle; QEMU counts afresh."""
    return replace(progress, throttle=step.throttle, dirty_high=0)
