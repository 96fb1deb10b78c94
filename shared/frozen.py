"""Changing a frozen dataclass of many fields in a fold, fast.

``dataclasses.replace`` builds the new instance through ``__init__``, one argument per
field: about 7 us for the scheduler's state of thirty fields, and a fold step makes
several. Without slots the fields live in the instance's ``__dict__``, which is copied
whole in C: under a microsecond.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def changed(obj: T, /, **changes: Any) -> T:
    """``dataclasses.replace(obj, **changes)`` for a frozen dataclass without slots,
    ``__post_init__`` or init-only fields (nothing is validated or derived on the way)."""
    new = object.__new__(type(obj))
    fields = new.__dict__
    fields.update(obj.__dict__)
    if not fields.keys() >= changes.keys():
        unknown = sorted(changes.keys() - fields.keys())
        raise TypeError(f"{type(obj).__name__} has no field {', '.join(unknown)}")
    fields.update(changes)
    return new
