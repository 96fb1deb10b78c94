"""The daemon's proposals fit the messages that carry them, whatever the VMs' names."""

from __future__ import annotations

import pytest

from schemas import Envelope
from schemas.memory import PagePair, PagesShared, SharePages
from services.sharing.scanning import SHARE_BATCH, share_batches
from shared.effects import record_parts


@pytest.mark.parametrize("name", ["a", "v" * 63])
def test_proposals_are_split_into_commands_that_fit_an_envelope_and_an_outbox_record(
    name: str,
) -> None:
    """Each batch's command, the host's answer listing its pairs, and the daemon's outbox
    record of it are each one readable message."""
    pairs = [PagePair(vm_a=name, page_a=4_000_000_000, vm_b=name, page_b=n) for n in range(5_000)]
    batches = share_batches(pairs)
    assert [p for b in batches for p in b] == pairs
    assert all(len(b) <= SHARE_BATCH for b in batches)
    for batch in batches:
        command = Envelope.wrap(SharePages(host="h1", pairs=batch), producer="t").encode()
        Envelope.wrap(PagesShared(host="h1", pairs=batch), producer="t").encode()
        assert len(record_parts([command.decode()])) == 1
