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


class RealtimeClock:
    """A chip clock that runs with real time and can also jump forward (the mock servers'
    clock: seconds since the chip started, plus every advance)."""

    def __init__(self) -> None:
        import time

        self._monotonic = time.monotonic
        self._start = time.monotonic()
        self._offset_s = 0.0

    def now(self) -> float:
        return self._monotonic() - self._start + self._offset_s

    def advance(self, dt_s: float) -> float:
        dt = float(dt_s)
        if math.isnan(dt) or dt < 0:
            raise ConfigError(f"clock advance {dt_s!r} s must be a non-negative number")
        self._offset_s += dt
        return self.now()

    def sleep_until(self, t_s: float) -> float:
        t = float(t_s)
        if math.isnan(t):
            raise ConfigError("sleep_until: time is NaN")
        now = self.now()
        if t > now:
            self._offset_s += t - now
        return self.now()
