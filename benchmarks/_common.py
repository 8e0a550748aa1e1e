"""Helpers shared by the benchmark scripts: timing and the bare-numpy reference loop.

Importing this module also takes the benchmarks folder off ``sys.path``: Python puts a
script's folder first, and ``benchmarks/mock_chip.py`` would then shadow the mock_chip
package. It puts the repository first instead, so ``examples.networks`` imports. Every
script imports it before the project's packages (isort's order does that).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # the repository: its examples/ are importable


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
