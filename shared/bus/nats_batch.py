"""Atomic appends on JetStream: a batch of events is stored whole or not at all.

The stream allows atomic publish (nats-server 2.12+). Every message but the last is
published without waiting; the last one commits the batch and its acknowledgement
tells how it ended. Expected versions ride on the messages they guard; a message id
already in the log makes the server refuse the whole batch, which is how a batch
that landed before (its acknowledgement lost) is recognised.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import api

from schemas import Envelope
from shared.bus import subjects
from shared.bus.errors import BusError, BusUnavailable, ConcurrencyError
from shared.bus.protocol import BATCH_LIMIT, AppendResult

WRONG_LAST_SEQUENCE = 10071
# The same, without the sequence found: a guard behind an earlier write of its subject
# in the same batch.
WRONG_LAST_SEQUENCE_CONSTANT = 10164
DUPLICATE_IN_BATCH = 10201
_ACTUAL_SEQ = re.compile(r"(\d+)\s*$")


async def publish_batch(
    nc: Client,
    namespace: str,
    envs: list[Envelope[Any]],
    expected: Mapping[int, int],
    timeout: float,
    subject_of: Callable[[str, Envelope[Any]], str] = subjects.event_subject,
) -> list[AppendResult]:
    if len(envs) > BATCH_LIMIT:
        raise BusError(f"a batch holds at most {BATCH_LIMIT} events, not {len(envs)}")
    batch = uuid.uuid4().hex
    last = len(envs) - 1
    try:
        for i, env in enumerate(envs):
            headers = {
                "Nats-Batch-Id": batch,
                "Nats-Batch-Sequence": str(i + 1),
                api.Header.MSG_ID: str(env.id),
            }
            if i in expected:
                headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected[i])
            subject = subject_of(namespace, env)
            if i < last:
                await nc.publish(subject, env.encode(), headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = await nc.request(subject, env.encode(), headers=headers, timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, OSError) as err:
        raise BusUnavailable(f"atomic append of {len(envs)} events failed: {err!r}") from err
    except nats.errors.Error as err:
        raise BusUnavailable(f"atomic append of {len(envs)} events failed: {err!r}") from err
    answer = json.loads(reply.data or b"{}")
    error = answer.get("error")
    if error is None:
        end = int(answer["seq"])
        return [AppendResult(end - last + i, duplicate=False) for i in range(len(envs))]
    code = error.get("err_code")
    description = error.get("description", "")
    if code == DUPLICATE_IN_BATCH:
        return [AppendResult(0, duplicate=True) for _ in envs]
    if code in {WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_CONSTANT}:
        found = _ACTUAL_SEQ.search(description) if code == WRONG_LAST_SEQUENCE else None
        first = min(expected) if expected else 0
        conflict = ConcurrencyError(
            envs[first].subject, expected.get(first, 0), int(found.group(1)) if found else None
        )
        # What the broker said: a conflict that keeps coming back is told apart by it.
        conflict.add_note(f"{description} ({code})")
        raise conflict
    raise BusError(f"atomic append refused: {description} ({code})")
