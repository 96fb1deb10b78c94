"""Base classes of every message, and the registry that finds a class by its type name."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Annotated, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints

# Names become tokens of bus subjects, so they may not hold dots, spaces or wildcards.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class Kind(enum.StrEnum):
    EVENT = "event"
    COMMAND = "command"
    TELEMETRY = "telemetry"
    QUERY = "query"
    REPLY = "reply"


class Part(BaseModel):
    """A frozen value nested inside a message (a row of a list, a pair)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(BaseModel):
    """A frozen payload; its class name is its type on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ClassVar[Kind]
    schema_version: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    def aggregate(self) -> str:
        """The envelope subject (``vm/<id>``, ``host/<id>``, ...) this message is about."""
        raise TypeError(f"{type(self).__name__} does not name its aggregate")


class Event(Message):
    """A fact, named in the past tense; appended to the log and never changed."""

    kind: ClassVar[Kind] = Kind.EVENT


class Command(Message):
    """A request, named in the imperative; exactly one handler owns it."""

    kind: ClassVar[Kind] = Kind.COMMAND


class Telemetry(Message):
    """A sample of a time series, kept with bounded retention."""

    kind: ClassVar[Kind] = Kind.TELEMETRY


class Query(Message):
    """A question answered from a projection by request/reply."""

    kind: ClassVar[Kind] = Kind.QUERY


class Reply(Message):
    """The answer to a query."""

    kind: ClassVar[Kind] = Kind.REPLY


_M = TypeVar("_M", bound=type[Message])


class Registry:
    """Maps a type name to its message class."""

    def __init__(self) -> None:
        self._types: dict[str, type[Message]] = {}

    def register(self, cls: _M) -> _M:
        name = cls.type_name()
        if self._types.get(name, cls) is not cls:
            raise ValueError(f"two message classes are named {name}")
        self._types[name] = cls
        return cls

    def get(self, name: str) -> type[Message] | None:
        return self._types.get(name)

    def __iter__(self) -> Iterator[type[Message]]:
        return iter(sorted(self._types.values(), key=lambda c: (c.kind, c.type_name())))

    def __len__(self) -> int:
        return len(self._types)


registry = Registry()
