"""Contention detection with hysteresis: no flapping on a single spike or a single dip."""

from __future__ import annotations

from schemas.contention import Evidence
from services.contention.detector import Change, Thresholds, Watch, observe

TH = Thresholds()


def ev(slowdown: float, ready: float = 0.0) -> Evidence:
    return Evidence(ticks=1, slowdown=slowdown, cpu_ready_ms=ready, demand_ratio=1.0)


def run(samples: list[Evidence], watch: Watch | None = None) -> list[Change | None]:
    w = watch or Watch()
    out = []
    for tick, e in enumerate(samples):
        w, change = observe(w, e, "h1", tick, TH)
        out.append(change)
    return out


def test_a_single_spike_is_not_contention() -> None:
    assert run([ev(1.0), ev(3.0), ev(1.0), ev(3.0), ev(1.0)]) == [None] * 5


def test_sustained_contention_is_detected_on_its_second_tick() -> None:
    assert run([ev(1.0), ev(1.5), ev(1.6)]) == [None, None, Change.DETECTED]
    # cpu.ready alone is evidence too.
    assert run([ev(1.0, ready=400), ev(1.0, ready=500)]) == [None, Change.DETECTED]


def test_it_clears_only_after_three_quiet_ticks_in_a_row() -> None:
    contended = Watch(episode="h1-t0")
    # One quiet tick, then a relapse: still contended.
    assert run([ev(1.0), ev(1.5), ev(1.0), ev(1.0)], contended) == [None] * 4
    assert run([ev(1.0), ev(1.05), ev(1.0)], contended) == [None, None, Change.CLEARED]


def test_between_the_bars_nothing_changes() -> None:
    """1.2 is under the bar to start (1.3) and over the bar to end (1.1): the state holds."""
    assert run([ev(1.2)] * 10) == [None] * 10
    assert run([ev(1.2)] * 10, Watch(episode="h1-t0")) == [None] * 10


def test_an_episode_is_named_after_its_host_and_tick() -> None:
    w, change = observe(Watch(streak=1), ev(2.0), "h7", 42, TH)
    assert change is Change.DETECTED
    assert w.episode == "h7-t42"
