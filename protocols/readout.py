"""Readouts at exponentially spaced times after programming, on any driver's clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from drivers.base import CrossbarDriver
from pcmlab.config import StrictModel
from protocols.interrupt import StopToken, deferred_sigint

log = logging.getLogger(__name__)

# (index, seconds since the end of programming, chip time, wall time, conductances µS)
ReadoutSink = Callable[[int, float, float, float, npt.NDArray[np.float32]], None]
# (index of the next readout, its planned time since programming, chip time now)
WaitCallback = Callable[[int, float, float], None]

_WAKE_S = 0.5  # longest uninterrupted sleep on a wall clock, so Ctrl-C is seen promptly


class ReadoutSchedule(StrictModel):
    """N log-spaced read times from t0 to t_end, in seconds after the end of programming."""

    t0_s: float = Field(20.0, gt=0, description="first readout after programming")
    t_end_s: float = Field(72_000.0, gt=0, description="last readout after programming")
    n_readouts: int = Field(20, ge=2, le=1_000_000, description="readouts, log-spaced "
                            "from t0_s to t_end_s (numpy.geomspace)")
    include_s: tuple[float, ...] = Field(
        (), description="extra read times (s) between t0 and t_end, e.g. 3600 for 1 h")

    @model_validator(mode="after")
    def _ordered(self) -> ReadoutSchedule:
        if self.t_end_s <= self.t0_s:
            raise ValueError(f"t_end_s={self.t_end_s} must be after t0_s={self.t0_s}")
        for t in self.include_s:
            if not self.t0_s <= t <= self.t_end_s:
                raise ValueError(f"include_s has {t}, outside t0_s..t_end_s = "
                                 f"{self.t0_s}..{self.t_end_s}")
        return self

    def times_s(self) -> npt.NDArray[np.float64]:
        """The log-spaced times with ``include_s`` merged in, sorted, no repeats."""
        times = np.geomspace(self.t0_s, self.t_end_s, self.n_readouts)
        if self.include_s:
            times = np.unique(np.concatenate([times, np.asarray(self.include_s, float)]))
        return times


def run_schedule(
    driver: CrossbarDriver,
    times_s: npt.ArrayLike,
    anchor_chip_s: float,
    sink: ReadoutSink,
    *,
    cells: npt.ArrayLike | None = None,
    start: int = 0,
    stop: StopToken | None = None,
    on_wait: WaitCallback | None = None,
) -> int:
    """Take readouts ``start``.. of ``times_s`` (s after ``anchor_chip_s`` on the chip's
    clock). A late readout is taken at once with its actual time; none is skipped.

    Returns the index after the last readout taken (``len(times_s)`` when complete).
    Ctrl-C or ``stop`` ends the run between readouts.
    """
    times = np.asarray(times_s, dtype=np.float64)
    stop = stop or StopToken()
    clock = driver.clock
    # a virtual clock jumps; a wall clock is slept in short steps so Ctrl-C is seen
    step_s = np.inf if driver.info.virtual_clock else _WAKE_S
    with deferred_sigint(stop):
        for i in range(start, times.size):
            due = anchor_chip_s + float(times[i])
            if on_wait is not None:
                on_wait(i, float(times[i]), clock.now())
            while (now := clock.now()) < due and not stop.requested:
                clock.sleep_until(min(due, now + step_s))
            if stop.requested:
                log.warning("readouts stopped before readout %d of %d", i + 1, times.size)
                return i
            chip_t = clock.now()  # the readout's time: when it started
            g = driver.read(cells)
            late_s = chip_t - due
            if late_s > max(1.0, 0.01 * float(times[i])):
                log.warning("readout %d taken %.1f s late (planned %.1f s after programming)",
                            i + 1, late_s, times[i])
            sink(i, chip_t - anchor_chip_s, chip_t, time.time(), g)
            if stop.requested:
                return i + 1
    return int(times.size)
