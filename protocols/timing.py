"""Per-call cost of a chip's operations against batch size: latency + per-cell cost.

What ``pcmlab check`` reports, and what program-and-verify measures for itself with
``max_batch_cells = "auto"`` to choose how many cells go into one driver call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.base import CrossbarDriver
from pcmlab.pulses import PulseKind


@dataclass(frozen=True)
class TimingFit:
    latency_s: float
    per_cell_s: float

    @property
    def break_even_cells(self) -> float:
        """Below this batch size a call costs mostly its latency."""
        return self.latency_s / self.per_cell_s if self.per_cell_s > 0 else math.inf

    def cells_within(self, budget_s: float, most: int = 1 << 24) -> int:
        """The largest batch whose call takes at most ``budget_s`` (at least one cell)."""
        if self.per_cell_s <= 0:
            return most
        return int(min(most, max(1.0, (budget_s - self.latency_s) / self.per_cell_s)))


def measure_timing(driver: CrossbarDriver, cells: npt.NDArray[np.uint32],
                   pulse: Callable[..., int], width_ns: float,
                   sizes: tuple[int, ...] = (1, 16, 256, 4096), repeats: int = 3
                   ) -> dict[str, TimingFit]:
    """Least-squares latency + per-cell cost of ``pulse`` (amplitude 0: no effect on the
    devices) and of ``read`` at several batch sizes (cells repeated to fill a batch)."""
    out = {}
    for name, call in (("pulse", lambda c: pulse(c, PulseKind.SET, 0.0, width_ns)),
                       ("read", driver.read)):
        xs, ys = [], []
        for n in sizes:
            batch = np.resize(cells, n).astype(np.uint32)
            best = math.inf
            for _ in range(repeats):
                t = time.perf_counter()
                call(batch)
                best = min(best, time.perf_counter() - t)
            xs.append(n)
            ys.append(best)
        slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys), 1)
        out[name] = TimingFit(max(float(intercept), 0.0), max(float(slope), 0.0))
    return out
