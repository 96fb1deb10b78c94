"""The consumers' window of recently handled message ids."""

from __future__ import annotations

import gc
import uuid

from shared.bus.dedupe import RecentIds


def test_remembers_at_least_the_last_window_of_ids() -> None:
    """Every one of the last ``window`` ids is recognised, however many came before."""
    seen = RecentIds(window=10)
    ids = [uuid.uuid4() for _ in range(35)]
    for msg_id in ids:
        seen.add(msg_id)
    assert all(msg_id in seen for msg_id in ids[-10:])
    assert ids[0] not in seen
    assert uuid.uuid4() not in seen


def test_window_is_invisible_to_the_garbage_collector() -> None:
    """The ids are kept as plain integers, so a full collection does not walk them."""
    seen = RecentIds(window=4)
    for _ in range(6):
        seen.add(uuid.uuid4())
    assert not any(gc.is_tracked(part) for part in (seen._current, seen._previous))
