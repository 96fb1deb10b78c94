"""How envelopes map to bus subjects; every adapter uses the same names."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from schemas import Envelope
from shared.bus.protocol import Stream


def _tokens(aggregate: str) -> str:
    return aggregate.replace("/", ".")


def event_subject(namespace: str, env: Envelope[Any]) -> str:
    return f"{namespace}.evt.{_tokens(env.subject)}"


def aggregate_subject(namespace: str, aggregate: str) -> str:
    return f"{namespace}.evt.{_tokens(aggregate)}"


def command_subject(namespace: str, env: Envelope[Any]) -> str:
    return f"{namespace}.cmd.{_tokens(env.subject)}.{env.type}"


def telemetry_subject(namespace: str, env: Envelope[Any]) -> str:
    return f"{namespace}.tel.{_tokens(env.subject)}"


def query_subject(namespace: str, target: str) -> str:
    return f"{namespace}.qry.{_tokens(target)}"


def dead_letter_subject(namespace: str, consumer: str) -> str:
    return f"{namespace}.dlq.{consumer}"


def stream_subject(namespace: str, stream: Stream, suffix: str) -> str:
    return f"{namespace}.{stream.value}.{suffix}"


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a trailing ``>`` is one or more."""
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Whether a subject matches any of ``patterns`` (as ``matches`` says), in one
    regular-expression match: a follower asks it of every entry."""
    tokens = {"*": r"[^.]+", ">": r".+"}
    alternatives = [r"\.".join(tokens.get(t, re.escape(t)) for t in p.split(".")) for p in patterns]
    if not alternatives:
        return lambda _subject: False
    found = re.compile("|".join(f"(?:{a})" for a in alternatives)).fullmatch
    return lambda subject: found(subject) is not None


def data_subject(namespace: str, flow: str) -> str:
    return f"{namespace}.data.{flow}"
