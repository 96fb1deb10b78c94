"""Consumer-side deduplication by message id, for logs that may hold a message twice."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator

from shared.bus.protocol import Logged

# As many ids as a busy minute of events: the window in which a retried publish
# could have written the same message twice.
DEFAULT_WINDOW = 100_000


class RecentIds:
    """The ids handled most recently, oldest forgotten first."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._window = window
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()

    def __contains__(self, msg_id: uuid.UUID) -> bool:
        return msg_id in self._ids

    def add(self, msg_id: uuid.UUID) -> None:
        self._ids[msg_id] = None
        if len(self._ids) > self._window:
            self._ids.popitem(last=False)


async def unique(entries: AsyncIterable[Logged]) -> AsyncIterator[Logged]:
    """Entries of a log read, each message id once (undecodable entries all pass)."""
    seen = RecentIds()
    async for entry in entries:
        if entry.envelope is not None:
            if entry.envelope.id in seen:
                continue
            seen.add(entry.envelope.id)
        yield entry
