"""A data flow is written a window of bytes at a time: a broker bounds what it takes in
unconfirmed, and a guest's memory is far more than that."""

from __future__ import annotations

from shared.bus.flows import windows


def test_windows_keep_order_and_stay_under_the_limit() -> None:
    chunks = [bytes([i]) * 300 for i in range(10)]
    runs = list(windows(chunks, limit=1000))
    assert [len(r) for r in runs] == [3, 3, 3, 1]
    assert [c for r in runs for c in r] == chunks


def test_a_chunk_larger_than_the_limit_goes_alone() -> None:
    chunks = [b"a" * 50, b"b" * 5000, b"c" * 50]
    assert [list(r) for r in windows(chunks, limit=100)] == [[chunks[0]], [chunks[1]], [chunks[2]]]
    assert list(windows([], limit=100)) == []
