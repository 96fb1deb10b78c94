"""Errors the bus raises; adapters translate their driver's errors into these."""


class BusError(Exception):
    """Root of every bus error."""


class BusUnavailable(BusError):
    """The broker cannot be reached."""


class ConcurrencyError(BusError):
    """An append named an expected aggregate version that is no longer current."""

    def __init__(self, aggregate: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"{aggregate}: expected version {expected}, log is at "
            f"{'unknown' if actual is None else actual}"
        )
        self.aggregate = aggregate
        self.expected = expected
        self.actual = actual


class RequestFailed(BusError):
    """A query got no answer in time, or nobody serves it."""


class PoisonMessage(Exception):
    """Raised by a handler: this message can never succeed, dead-letter it now."""
