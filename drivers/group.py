"""Several chips as one driver: their arrays stacked as one tall array.

Chip k's cell ``r * cols + c`` is the group's cell ``k * rows * cols + r * cols + c``, so
a network mapped across several arrays (``NetworkMapping.place(arrays=N)``) is programmed
and read through one ``CrossbarDriver``, on one schedule, into one measurement file. Every
call is split by chip, checked whole against the limits before any chip sees it, and sent
chip by chip; reads are put back together in the order asked.

The group's clock is the first chip's. Sleeping the group sleeps every chip to the same
moment on its own clock (the offsets between the chips' clocks are measured when the group
is made), so virtual clocks jump together and wall clocks simply run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from drivers.base import F32, ChipInfo, CrossbarDriver, DriverBase
from pcmlab.config import ArrayGeometry, ChipLimits
from pcmlab.errors import ConfigError, LimitError
from pcmlab.mvm import MvmRegion, MvmRequest
from pcmlab.pulses import PulseKind


class GroupClock:
    """The first chip's clock; ``sleep_until`` brings every chip to the same moment."""

    def __init__(self, drivers: Sequence[CrossbarDriver]) -> None:
        self._drivers = list(drivers)
        first = self._drivers[0].clock.now()
        self._offsets = [d.clock.now() - first for d in self._drivers]

    def now(self) -> float:
        return self._drivers[0].clock.now()

    def sleep_until(self, t_s: float) -> float:
        for d, offset in zip(self._drivers, self._offsets, strict=True):
            d.clock.sleep_until(t_s + offset)
        return self.now()


class ChipGroup(DriverBase):
    """``CrossbarDriver`` over several chips of one geometry (their arrays stacked)."""

    def __init__(self, drivers: Sequence[CrossbarDriver]) -> None:
        self.drivers = list(drivers)
        if not self.drivers:
            raise ConfigError("a chip group needs at least one chip")
        infos = [d.info for d in self.drivers]
        geo = infos[0].geometry
        if any(i.geometry != geo for i in infos):
            shapes = ", ".join(f"{i.geometry.rows} x {i.geometry.cols}" for i in infos)
            raise ConfigError(f"the chips of a group must have one array shape; got {shapes}")
        self.rows_per_chip, self.cells_per_chip = geo.rows, geo.n_cells
        limits = ChipLimits(  # what every chip accepts
            max_set_ua=min(i.limits.max_set_ua for i in infos),
            max_reset_ua=min(i.limits.max_reset_ua for i in infos),
            min_width_ns=max(i.limits.min_width_ns for i in infos),
            max_width_ns=min(i.limits.max_width_ns for i in infos))
        self._info = ChipInfo(
            identity=" | ".join(i.identity for i in infos),
            geometry=ArrayGeometry(rows=geo.rows * len(infos), cols=geo.cols),
            g_max_us=min(i.g_max_us for i in infos), limits=limits,
            virtual_clock=all(i.virtual_clock for i in infos), arrays=len(infos),
            mvm=infos[0].mvm if all(i.mvm == infos[0].mvm for i in infos) else None)
        self._clock = GroupClock(self.drivers)

    def _split(self, cells: npt.NDArray[np.uint32]
               ) -> list[tuple[int, npt.NDArray[np.intp], npt.NDArray[np.uint32]]]:
        """(chip, positions in the request, local cells) for every chip the request uses."""
        chip = cells // self.cells_per_chip
        out = []
        for k in np.unique(chip):
            where = np.flatnonzero(chip == k)
            out.append((int(k), where, (cells[where] - k * self.cells_per_chip)
                        .astype(np.uint32)))
        return out

    def apply_pulses(self, cells: npt.ArrayLike, kind: PulseKind | str,
                     amplitude_ua: npt.ArrayLike, width_ns: float) -> int:
        kind_, cells_, amps, width = self.check_pulses(cells, kind, amplitude_ua, width_ns)
        return sum(self.drivers[k].apply_pulses(local, kind_, amps[where], width)
                   for k, where, local in self._split(cells_))

    def read(self, cells: npt.ArrayLike | None = None) -> F32:
        if cells is None:
            return np.concatenate([d.read(None) for d in self.drivers]).astype(np.float32)
        cells_ = self.check_cells(cells)
        out = np.empty(cells_.size, dtype=np.float32)
        for k, where, local in self._split(cells_):
            out[where] = self.drivers[k].read(local)
        return out

    def _mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:
        """On the chip whose rows hold the region (a region never spans two chips)."""
        rows = self.drivers[0].info.geometry.rows
        r = request.region
        k = r.row0 // rows
        if (r.row0 + r.rows - 1) // rows != k:
            raise LimitError(f"MVM region rows {r.row0}..{r.row0 + r.rows - 1} span two "
                             f"chips of {rows} rows")
        local = MvmRegion(r.row0 - k * rows, r.col0, r.rows, r.cols)
        return self.drivers[k].mvm(local, request.inputs, full_scale=request.full_scale,
                                   differential=request.differential)

    def close(self) -> None:
        for d in self.drivers:
            d.close()
        super().close()
