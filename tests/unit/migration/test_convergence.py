"""Between pre-copy rounds: switch over once the dirty pages fit the downtime limit,
throttle a guest that dirties faster than the link (as QEMU's auto-converge does), and
give up, with the reason, when even the strongest throttle does not help."""

from __future__ import annotations

from dataclasses import replace

from services.migration.convergence import (
    GiveUp,
    Limits,
    NextRound,
    Progress,
    RoundSent,
    Step,
    Switchover,
    Throttle,
    next_step,
    throttled,
)
from services.migration.precopy_model import PAGE_BYTES

GBIT = 125_000_000
LIMITS = Limits(bytes_per_s=GBIT)


def sent(pages: int, dirtied: int) -> RoundSent:
    return RoundSent(pages=pages, wire_bytes=pages * PAGE_BYTES, dirtied=dirtied)


def test_switches_over_once_the_dirty_pages_fit_the_downtime_limit() -> None:
    progress = Progress().after(sent(65_536, 5_000), LIMITS)
    step = next_step(progress, LIMITS)
    assert isinstance(step, Switchover)
    assert step.expected_downtime_s == 5_000 * PAGE_BYTES / GBIT


def test_goes_on_while_the_rounds_shrink_below_the_trigger() -> None:
    progress = Progress().after(sent(65_536, 20_000), LIMITS).after(sent(20_000, 9_500), LIMITS)
    assert next_step(progress, LIMITS) == NextRound()
    assert progress.dirty_high == 0


def test_a_written_page_counts_whole_whatever_the_round_sent_as_zero_markers() -> None:
    # 10,000 pages that went out as 100-byte markers; the 50,000 written meanwhile are
    # not zero: 205 MB, 1.6 s at 1 Gbit/s.
    markers = RoundSent(pages=10_000, wire_bytes=10_000 * 100, dirtied=50_000)
    progress = Progress().after(markers, LIMITS)
    assert next_step(progress, LIMITS) == NextRound()
    assert progress.expected_downtime_s(LIMITS) == 50_000 * PAGE_BYTES / GBIT


def test_the_device_state_counts_in_the_downtime() -> None:
    limits = replace(LIMITS, device_bytes=int(0.3 * GBIT))
    progress = Progress().after(sent(65_536, 1), limits)
    assert next_step(progress, LIMITS) == Switchover(PAGE_BYTES / GBIT)
    assert not isinstance(next_step(progress, limits), Switchover)


def test_throttles_after_two_rounds_that_dirty_more_than_half_of_what_they_send() -> None:
    once = Progress().after(sent(65_536, 40_000), LIMITS)
    assert next_step(once, LIMITS) == NextRound()
    twice = once.after(sent(40_000, 30_000), LIMITS)
    step = next_step(twice, LIMITS)
    assert step == Throttle(0.2)
    assert isinstance(step, Throttle)
    assert step.cpu_cap == 0.8
    # Counted afresh after each step: two more high rounds before the next one.
    again = throttled(twice, step).after(sent(30_000, 25_000), LIMITS)
    assert next_step(again, LIMITS) == NextRound()
    assert next_step(again.after(sent(25_000, 20_000), LIMITS), LIMITS) == Throttle(0.3)


def test_gives_up_when_the_strongest_throttle_does_not_fit_the_limit() -> None:
    progress = throttled(Progress(), Throttle(LIMITS.throttle_max))
    for _ in range(LIMITS.rounds_at_max + 1):
        progress = progress.after(sent(40_000, 40_000), LIMITS)
    step = next_step(progress, LIMITS)
    assert isinstance(step, GiveUp)
    assert "did not converge" in step.reason
    assert "99%" in step.reason


def test_gives_up_after_the_most_rounds() -> None:
    limits = Limits(bytes_per_s=GBIT, max_rounds=3)
    progress = Progress()
    for _ in range(3):
        progress = progress.after(sent(20_000, 12_000), limits)
    step = next_step(progress, limits)
    assert isinstance(step, GiveUp)
    assert "in 3 rounds" in step.reason


def test_a_guest_dirtying_faster_than_the_link_converges_only_throttled() -> None:
    """A guest that dirties 1.5 times what the link carries, over 60,000 pages it keeps
    rewriting, in proportion to the CPU time it is left."""
    link_pages = GBIT / PAGE_BYTES
    progress, steps = Progress(), list[Step]()
    to_send = 65_536
    while True:
        seconds = to_send / link_pages
        dirtied = min(60_000, round(1.5 * link_pages * (1 - progress.throttle) * seconds))
        progress = progress.after(sent(to_send, dirtied), LIMITS)
        step = next_step(progress, LIMITS)
        steps.append(step)
        if isinstance(step, Throttle):
            progress = throttled(progress, step)
            step = next_step(progress, LIMITS)
        if isinstance(step, Switchover | GiveUp):
            break
        to_send = dirtied
    throttles = [s.throttle for s in steps if isinstance(s, Throttle)]
    assert throttles[:3] == [0.2, 0.3, 0.4]
    assert isinstance(steps[-1], Switchover)
    assert steps[-1].expected_downtime_s <= LIMITS.downtime_s
    # At the throttle it converged with, the guest dirties less than the link carries.
    assert 1.5 * (1 - throttles[-1]) < 1
