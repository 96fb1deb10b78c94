"""Clark et al.'s pre-copy model: each round sends what the one before let be dirtied,
until what is left fits the downtime limit."""

from __future__ import annotations

import pytest

from services.migration.precopy_model import PAGE_BYTES, Link, predict

GBIT = 125_000_000  # 1 Gbit/s in bytes per second
MIB_256 = 256 * 1024 * 1024 // PAGE_BYTES


def test_an_idle_guest_moves_in_one_round_with_no_downtime() -> None:
    got = predict(Link(MIB_256, dirty_pages_per_s=0, bytes_per_s=GBIT))
    assert got.round_pages == (MIB_256,)
    assert (got.final_pages, got.downtime_s, got.converged) == (0, 0.0, True)
    assert got.total_bytes == MIB_256 * PAGE_BYTES
    assert got.total_s == pytest.approx(MIB_256 * PAGE_BYTES / GBIT)


def test_rounds_halve_when_the_guest_dirties_at_half_the_link_rate() -> None:
    half = GBIT / PAGE_BYTES / 2
    got = predict(Link(MIB_256, dirty_pages_per_s=half, bytes_per_s=GBIT))
    # 300 ms at 1 Gbit/s is 9,155 pages: the fourth halving fits.
    assert got.round_pages == (65_536, 32_768, 16_384)
    assert got.final_pages == 8_192
    assert got.converged
    assert got.downtime_s == pytest.approx(8_192 * PAGE_BYTES / GBIT)
    assert got.total_bytes == (65_536 + 32_768 + 16_384 + 8_192) * PAGE_BYTES


def test_a_guest_dirtying_faster_than_the_link_does_not_converge() -> None:
    got = predict(Link(MIB_256, dirty_pages_per_s=2 * GBIT / PAGE_BYTES, bytes_per_s=GBIT))
    # The second round would be no smaller than the first: the model stops and copies.
    assert got.round_pages == (MIB_256,)
    assert got.final_pages == MIB_256
    assert not got.converged
    assert got.downtime_s > 0.3


def test_a_small_working_set_converges_whatever_the_dirty_rate() -> None:
    link = Link(
        MIB_256, dirty_pages_per_s=10 * GBIT / PAGE_BYTES, bytes_per_s=GBIT, working_set_pages=5_000
    )
    got = predict(link)
    assert got.round_pages == (MIB_256,)
    assert got.final_pages == 5_000
    assert got.converged


def test_the_rounds_stop_at_the_bound() -> None:
    # Shrinking by a hair each round: only the bound ends it.
    rate = 0.999 * GBIT / PAGE_BYTES
    got = predict(Link(MIB_256, dirty_pages_per_s=rate, bytes_per_s=GBIT, max_rounds=5))
    assert len(got.round_pages) == 5
    assert not got.converged


def test_a_guest_without_memory_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one page"):
        predict(Link(0, dirty_pages_per_s=0, bytes_per_s=GBIT))
