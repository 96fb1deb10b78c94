"""Stopping a task for good.

Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives in the same
turn of the loop as the result it waits for (bpo-42130, fixed in 3.12), and nats-py
waits for every message with it: a task cancelled once may carry on, fetching again,
while whoever stops it waits. So a task is cancelled until it has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

CANCEL_AGAIN_AFTER = 0.05


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` until it has ended; raise what it failed with, if it failed (a
    cancellation of the caller itself goes through: bounded stops stay bounded)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_AGAIN_AFTER)
    if not task.cancelled():
        task.result()
