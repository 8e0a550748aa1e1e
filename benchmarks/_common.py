"""Helpers shared by the benchmark scripts: timing and the bare-numpy reference loop.

Importing this module also takes the benchmarks folder off ``sys.path``: Python puts a
script's folder first, and ``benchmarks/mock_chip.py`` would then shadow the mock_chip
package. It puts the repository first instead, so ``examples.networks`` imports. Every
script imports it before the project's packages (isort's order does that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # the repository: its examples/ are importable


def _load_registry():
    """benchmarks/registry.py (this folder is off sys.path, so it is loaded by file)."""
    spec = importlib.util.spec_from_file_location("benchmarks_registry", _HERE / "registry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


registry = _load_registry()


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


def zero_timing():
    """The mock chip's operation times all zero (its defaults are a real controller's:
    1 µs per pulse would put a second of virtual time on every SET of 1 M cells, and the
    reads would then age the devices): the clock moves only when told, as the pulse-and-
    read benchmarks state."""
    from mock_chip.chip import OperationTimes

    return OperationTimes(**dict.fromkeys(OperationTimes.model_fields, 0.0))


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: also write the figures machine-readably (``run_all.py`` does)."""
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write the figures with their targets as JSON to PATH")


class Figures:
    """The figures a benchmark script reports, judged against benchmarks/registry.py."""

    def __init__(self, script: str) -> None:
        self.entry = registry.benchmark(script)
        self.values: dict[str, float] = {}

    def add(self, key: str, value: float) -> str:
        """Record a figure; returns its verdict text for the script's own line."""
        target = self.entry.figures[key]
        self.values[key] = float(value)
        met = target.met(float(value))
        if met is None:
            return "for information"
        return f"target {target.describe()}: {'met' if met else 'MISSED'}"

    def write(self, path: Path | None) -> None:
        if path is None:
            return
        path.write_text(json.dumps({"script": self.entry.script, "figures": self.values,
                                    "load_average": os.getloadavg()}))


def not_run(path: Path | None, reason: str) -> int:
    """A benchmark that cannot run here (a missing browser, say): says why, and tells
    run_all.py, whose rows then read "not run: <reason>" and count as missed. Returns the
    exit status for ``main`` (0: the script did what it could)."""
    print(f"not run: {reason}")
    if path is not None:
        path.write_text(json.dumps({"not_run": reason, "figures": {}}))
    return 0


def cpu_best_of(fn: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    """(fastest wall time, fastest CPU time of this thread) over ``repeats`` runs, in s:
    on a machine shared with other work the CPU time is the steadier of the two."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - w)
    return min(walls), min(cpus)
