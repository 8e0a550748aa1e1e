"""Helpers shared by the benchmark scripts: timing and the bare-numpy reference loop."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` runs, in seconds (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def numpy_reference(n_cells: int, rounds: int = 20, seed: int = 0) -> Callable[[], object]:
    """The reference of comparable arithmetic: per round, draw N normals and update N
    floats elementwise (float32, as the mock chip stores conductances)."""
    rng = np.random.default_rng(seed)
    g = np.zeros(n_cells, dtype=np.float32)

    def run() -> object:
        for _ in range(rounds):
            np.add(g, np.float32(0.5) * rng.standard_normal(n_cells, dtype=np.float32), out=g)
        return g

    return run
