"""The nats-py client with a cheaper header parser.

Every log entry carries four or five headers (message id, batch id and sequence, the
expected version), and a follower reads every entry. The stock parser tests each
character of each header name for whitespace in a generator: about a tenth of a busy
scheduler's time. This one keeps its behaviour (same names skipped, same decoding) with
one regular-expression search per name.
"""

from __future__ import annotations

import re

from nats.aio.client import Client

_CRLF = b"\r\n"
# Matches the characters ``str.isspace`` is true for (the stock parser's test).
_SPACE = re.compile(r"\s")


class HeadersClient(Client):
    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(_CRLF):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if _SPACE.search(key) is None:
                out[key] = value.strip().decode("utf-8", "replace")
        return out
