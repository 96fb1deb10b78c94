"""A planned migration, as maintenance and rebalancing propose them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Move:
    vm: str
    source: str
    target: str
