"""The ``CrossbarDriver`` contract every chip driver fulfils, and what they share.

Batch-oriented: a real controller is slow per call, so every call takes many cells.
Conductances in µS (float32), times in s (float64), amplitudes in µA, widths in ns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import Field

from pcmlab.config import ArrayGeometry, ChipLimits, StrictModel
from pcmlab.errors import CapabilityError, ConfigError, LimitError
from pcmlab.mvm import CODE, MVM_HEAD, MvmRegion, MvmRequest, MvmSpec
from pcmlab.pulses import PulseKind, check_cells, check_pulses

MAX_BLOCK_BYTES = 1 << 26  # one block or frame on either wire: 64 MiB

F32 = npt.NDArray[np.float32]


class ChipInfo(StrictModel):
    """What a driver learned about its chip when it connected."""

    identity: str = Field(description="*IDN? string: maker,model,serial,firmware")
    geometry: ArrayGeometry
    g_max_us: float = Field(25.0, gt=0, description="top of the usable conductance range")
    limits: ChipLimits
    virtual_clock: bool = Field(False, description="the chip's clock can jump forward")
    arrays: int = Field(1, ge=1, description="arrays stacked in the geometry (a ChipGroup "
                        "of several chips): each has geometry.rows / arrays rows")
    mvm: MvmSpec | None = Field(None, description="the in-array matrix-vector "
                                "multiplication periphery, on chips that have it")

    @property
    def n_cells(self) -> int:
        return self.geometry.n_cells

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the chip does beyond pulses and reads: "mvm"."""
        return ("mvm",) if self.mvm is not None else ()


@runtime_checkable
class Clock(Protocol):
    """Seconds on the chip's time base; ``sleep_until`` returns at (or after) ``t_s``."""

    def now(self) -> float: ...

    def sleep_until(self, t_s: float) -> float: ...


class WallClock:
    """Real time (monotonic), for chips without a virtual clock."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._start

    def sleep_until(self, t_s: float) -> float:
        while (remaining := t_s - self.now()) > 0:
            time.sleep(min(remaining, 1.0))
        return self.now()


@runtime_checkable
class CrossbarDriver(Protocol):
    """One interface for every PCM crossbar chip."""

    @property
    def info(self) -> ChipInfo: ...

    @property
    def clock(self) -> Clock: ...

    def apply_pulses(
        self,
        cells: npt.ArrayLike,
        kind: PulseKind | str,
        amplitude_ua: npt.ArrayLike,
        width_ns: float,
    ) -> int:
        """One pulse on each listed cell; returns the number applied. Raises LimitError
        before sending anything if a value is outside the chip's limits."""
        ...

    def read(self, cells: npt.ArrayLike | None = None) -> F32:
        """Conductances in µS of the listed cells (None: the whole array, row-major)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> CrossbarDriver: ...

    def __exit__(self, *exc: object) -> None: ...


class DriverBase:
    """Shared behaviour: ``info`` and ``clock`` (set by the driver as ``_info`` and
    ``_clock`` when it connects), limit checks against ``info``, context manager, closed
    state."""

    _closed: bool = False
    _info: ChipInfo
    _clock: Clock

    @property
    def info(self) -> ChipInfo:
        return self._info

    @property
    def clock(self) -> Clock:
        return self._clock

    def check_pulses(
        self, cells: npt.ArrayLike, kind: PulseKind | str, amplitude_ua: npt.ArrayLike,
        width_ns: float,
    ) -> tuple[PulseKind, npt.NDArray[np.uint32], F32, float]:
        info = self.info
        return check_pulses(cells, kind, amplitude_ua, width_ns, info.n_cells, info.limits)

    def check_cells(self, cells: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        return check_cells(cells, self.info.n_cells)

    # -- matrix-vector multiplication (chips with the "mvm" capability) --------------------
    def mvm(self, region: MvmRegion | tuple[int, int, int, int], inputs: npt.ArrayLike, *,
            full_scale: float, differential: bool = True) -> npt.NDArray[np.int16]:
        """ADC codes (n, outputs) of the in-array product of the input vectors ``inputs``
        (n, rows; signed DAC codes) with the conductances of ``region`` (row0, col0, rows,
        cols); see ``pcmlab.mvm`` for the units. Checked against the chip's array and
        periphery before anything is sent; sent in as many requests as the chip's
        ``max_vectors`` and the 64 MiB block limit (of the request and of the reply) need."""
        spec = self.info.mvm
        if spec is None:
            raise CapabilityError(f"{self.info.identity} has no MVM capability (its "
                                  f"capabilities: {', '.join(self.info.capabilities) or 'none'}"
                                  "); use measured mode (reads) on this chip")
        r = MvmRegion(*(int(v) for v in region))
        geo = self.info.geometry
        if r.rows < 1 or r.cols < 1 or r.row0 < 0 or r.col0 < 0 or (
                r.row0 + r.rows > geo.rows or r.col0 + r.cols > geo.cols):
            raise LimitError(f"MVM region {tuple(r)} (row0, col0, rows, cols) is outside the "
                             f"{geo.rows} x {geo.cols} array")
        if differential and r.cols % 2:
            raise ConfigError(f"a differential MVM takes column pairs: {r.cols} columns")
        if not (np.isfinite(full_scale) and full_scale > 0):
            raise ConfigError(f"MVM full_scale = {full_scale}: a positive number of devices "
                              "at G_max")
        x = np.asarray(inputs)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != r.rows or not np.issubdtype(x.dtype, np.integer):
            raise ConfigError(f"MVM inputs must be integer DAC codes of shape (n, {r.rows}), "
                              f"got {x.dtype} of shape {x.shape}")
        if x.size and int(np.abs(x.astype(np.int64)).max()) > spec.dac_max:
            raise LimitError(f"an MVM input code beyond +-{spec.dac_max} (the chip's "
                             f"{spec.dac_bits}-bit DAC)")
        codes = x.astype(CODE)
        outputs = r.cols // 2 if differential else r.cols
        # both blocks within the limit: the request (head + n x rows codes) and the reply
        # (n x outputs codes), which is the larger one when outputs > rows
        per = max(1, min(spec.max_vectors,
                         (MAX_BLOCK_BYTES - MVM_HEAD.size) // (CODE.itemsize * r.rows),
                         MAX_BLOCK_BYTES // (CODE.itemsize * outputs)))
        parts = [self._mvm(MvmRequest(r, differential, float(full_scale), codes[i:i + per]))
                 for i in range(0, codes.shape[0], per)]
        return (np.concatenate(parts) if parts else np.zeros((0, outputs), np.int16))

    def _mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:  # pragma: no cover
        raise CapabilityError(f"{self.info.identity}: this driver does not implement MVM")

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> DriverBase:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RemoteClock:
    """The chip's own clock, asked over the wire. A virtual clock is jumped forward; a
    real one is waited for (locally, then confirmed with the chip)."""

    def __init__(self, now: Callable[[], float], advance: Callable[[float], None] | None
                 ) -> None:
        self._now = now
        self._advance = advance

    def now(self) -> float:
        return self._now()

    def sleep_until(self, t_s: float) -> float:
        now = self._now()
        if t_s <= now:
            return now
        if self._advance is not None:
            self._advance(t_s - now)
            return self._now()
        while (remaining := t_s - now) > 0:
            time.sleep(min(remaining, 1.0))
            now = self._now()
        return now


class RemoteDriverBase(DriverBase):
    """A driver that talks to a chip over a wire: ``_now`` and ``_advance`` ask the chip,
    and ``pulses_acknowledged`` counts, per cell, the pulses the chip confirmed."""

    pulses_acknowledged: npt.NDArray[np.uint32]

    def _now(self) -> float:  # pragma: no cover - every remote driver overrides
        raise NotImplementedError

    def _advance(self, dt_s: float) -> None:  # pragma: no cover
        raise NotImplementedError

    def _connected(self, identity: str, rows: int, cols: int,
                   limits: tuple[float, float, float, float], g_max_us: float,
                   virtual_clock: bool, mvm: MvmSpec | None = None) -> None:
        """Record what the chip told us when we connected."""
        self._info = ChipInfo(mvm=mvm,
            identity=identity, geometry=ArrayGeometry(rows=rows, cols=cols),
            g_max_us=g_max_us,
            limits=ChipLimits(max_set_ua=limits[0], max_reset_ua=limits[1],
                              min_width_ns=limits[2], max_width_ns=limits[3]),
            virtual_clock=virtual_clock)
        self.pulses_acknowledged = np.zeros(rows * cols, dtype=np.uint32)
        self._clock = RemoteClock(self._now, self._advance if virtual_clock else None)
