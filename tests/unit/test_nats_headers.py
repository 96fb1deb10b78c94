"""The client's header parser reads every header block as the stock nats-py one does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from shared.bus.nats_client import HeadersClient

pieces = st.sampled_from(
    [b"Nats-Msg-Id", b"Nats-Batch-Id", b" ", b"\t", b":", b"\r\n", b"x", b"\xc3\xa9", b"\x1c"]
)
blocks = st.lists(pieces | st.binary(max_size=6), max_size=24).map(b"".join)


@settings(max_examples=500)
@given(blocks)
def test_any_header_block_parses_as_the_stock_client_parses_it(raw: bytes) -> None:
    assert HeadersClient._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_the_headers_of_a_log_entry() -> None:
    raw = (
        b"Nats-Batch-Id: 4f2a\r\nNats-Batch-Sequence: 3\r\nNats-Msg-Id: 9c1e\r\n"
        b"Bad Name: x\r\nno colon\r\n\r\n"
    )
    assert HeadersClient._parse_header_lines(raw) == {
        "Nats-Batch-Id": "4f2a",
        "Nats-Batch-Sequence": "3",
        "Nats-Msg-Id": "9c1e",
    }
