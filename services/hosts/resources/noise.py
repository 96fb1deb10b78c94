"""Counter-based random numbers: a pure function of (seed, stream, counter).

A profile asks for "the draw for epoch k" instead of advancing a generator, so any
``sim_time`` can be sampled on its own, in any order, for any number of VMs at once, and
the same seed always gives the same series.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

_MASK = (1 << 64) - 1
# splitmix64's constants (Steele, Lea, Flood 2014).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_STREAM = np.uint64(0xD1B54A32D192ED03)


def seed_array(seeds: Iterable[int]) -> NDArray[np.uint64]:
    """Any Python ints (negative or huge too) as 64-bit seeds."""
    return np.array([s & _MASK for s in seeds], dtype=np.uint64)


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniform(
    seed: NDArray[np.uint64], stream: int, counter: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Uniform draws in [0, 1), one per broadcast element of ``seed`` and ``counter``.

    ``counter`` holds whole numbers (an epoch index, from ``np.floor``); ``stream`` keeps the
    draws of one profile's different decisions independent.
    """
    with np.errstate(over="ignore"):
        base = _mix(seed ^ (np.uint64(stream) * _STREAM))
        step = np.atleast_1d(counter).astype(np.int64).astype(np.uint64)
        bits = _mix(base + step * _GAMMA)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
