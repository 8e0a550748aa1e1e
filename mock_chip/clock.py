"""The mock chip's virtual clock: it moves only when told, so drift experiments take no time."""

from __future__ import annotations

import math

from pcmlab.errors import ConfigError


class VirtualClock:
    """Seconds since the chip started; advances instantly and never goes back."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._t_s = float(start_s)

    def now(self) -> float:
        return self._t_s

    def advance(self, dt_s: float) -> float:
        """Jump forward by ``dt_s`` seconds; returns the new time."""
        dt = float(dt_s)
        if math.isnan(dt) or dt < 0:
            raise ConfigError(f"clock advance {dt_s!r} s must be a non-negative number")
        self._t_s += dt
        return self._t_s

    def sleep_until(self, t_s: float) -> float:
        """Jump to ``t_s`` if it lies ahead; a time in the past returns at once."""
        t = float(t_s)
        if math.isnan(t):
            raise ConfigError("sleep_until: time is NaN")
        if t > self._t_s:
            self._t_s = t
        return self._t_s
