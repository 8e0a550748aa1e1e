"""The mock chip: an array of PCM devices, a virtual clock, hard limits and a seed.

This is what the chip's firmware would hold. The wire servers and the in-process driver
call it; it never knows how it was reached.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from pydantic import Field

from mock_chip.clock import RealtimeClock, VirtualClock
from mock_chip.mvm import MvmPeriphery, MvmUnit
from mock_chip.physics import DeviceArray, DevicePhysics, FaultRates
from mock_chip.read_noise import FlickerNoise
from pcmlab import __version__
from pcmlab.config import ArrayGeometry, ChipLimits, StrictModel
from pcmlab.mvm import MvmRequest
from pcmlab.pcm_model import PCMCalibration, PCMModel
from pcmlab.pulses import PulseKind, check_cells, check_pulses

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

_BLOCK = 1 << 16  # cells per block of elementwise work


class OperationTimes(StrictModel):
    """How long the chip's operations take on its virtual clock, as a real controller's
    do: latency per call + time per cell (or vector). The defaults are a real controller's
    orders of magnitude: about 1 ms per command (host link and firmware), 1 µs per pulse
    (a 0.1-1 µs pulse plus addressing and settling, one device at a time), 0.1 µs per
    cell read (sense amplifiers in parallel along a row) and 1 µs per MVM input vector
    (PWM inputs of a few hundred ns and the column ADCs). So cells programmed first are
    older than the rest when programming ends. A wall clock (mock servers) runs anyway;
    all zero: the clock moves only when told."""

    pulse_call_s: float = Field(1e-3, ge=0, description="latency of one pulse command, s")
    pulse_per_cell_s: float = Field(1e-6, ge=0, description="time per pulse, s")
    read_call_s: float = Field(1e-3, ge=0, description="latency of one read command, s")
    read_per_cell_s: float = Field(1e-7, ge=0, description="time per cell read, s")
    mvm_call_s: float = Field(1e-3, ge=0, description="latency of one MVM command, s")
    mvm_per_vector_s: float = Field(1e-6, ge=0, description="time per MVM input vector, s")


class MockChipConfig(StrictModel):
    """Everything that defines a mock chip; the same seed gives the same chip and results."""

    geometry: ArrayGeometry = Field(ArrayGeometry(), description="rows x cols")
    timing: OperationTimes = Field(OperationTimes(), description="virtual time pulses, "
                                   "reads and MVMs take (a real controller's orders of "
                                   "magnitude by default)")
    limits: ChipLimits = Field(ChipLimits(), description="pulse limits it refuses beyond")
    physics: DevicePhysics = Field(DevicePhysics(), description="pulse-level device "
                                   "model (thresholds, partial RESET)")
    faults: FaultRates = Field(FaultRates(), description="stuck and weak devices")
    calibration: PCMCalibration = Field(PCMCalibration(), description="drift and read "
                                        "noise constants ('pcmlab fit' writes them)")
    mvm: MvmPeriphery = Field(MvmPeriphery(), description="in-array matrix-vector "
                              "multiplication: DAC, ADC and their mismatch")
    seed: int = Field(0, ge=0, description="one seed: the same chip every time")
    maker: str = Field("pcmlab", description="first field of its identity")
    model: str = Field("MockPCM", description="second field of its identity")


class MockChip:
    """A pulse-level PCM crossbar in memory.

    Its clock is virtual (moves only when told) unless a ``RealtimeClock`` is given, as the
    wire servers do.
    """

    def __init__(self, config: MockChipConfig | None = None, *,
                 clock: VirtualClock | RealtimeClock | None = None,
                 **overrides: object) -> None:
        if config is None:
            config = MockChipConfig.model_validate(overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config
        self.geometry = config.geometry
        self.limits = config.limits
        self.model = PCMModel(config.calibration)
        seeds = np.random.SeedSequence(config.seed).spawn(5)  # children 0-2 as before MVM
        n = config.geometry.n_cells
        self.devices = DeviceArray(n, config.physics, config.faults, self.model,
                                   np.random.default_rng(seeds[0]))
        self.noise = FlickerNoise(n, np.random.default_rng(seeds[1]),
                                  t_read_s=config.calibration.t_read_s,
                                  tau_min_s=config.physics.min_read_delay_s)
        self.rng = np.random.default_rng(seeds[2])
        self.mvm_unit = (MvmUnit(config.mvm, config.geometry.cols,
                                 np.random.default_rng(seeds[3]))
                         if config.mvm.enabled else None)
        self.mvm_rng = np.random.default_rng(seeds[4])
        self.clock = clock if clock is not None else VirtualClock()
        self.pulse_count = np.zeros(n, dtype=np.uint32)
        self._seen = np.zeros(n, dtype=np.bool_)
        # sqrt(ln((t + t_r) / (2 t_r))) at the minimum read delay, as _read_block computes it
        delay = np.array([config.physics.min_read_delay_s], dtype=np.float32)
        self._young_read_sigma = np.sqrt(self.model.read_noise_log_factor(delay))[0]
        log.info("mock chip %s ready: %d x %d, seed %d", self.identity,
                 self.geometry.rows, self.geometry.cols, config.seed)

    # -- identity --------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        c = self.config
        return f"{c.maker},{c.model}-{c.geometry.rows}x{c.geometry.cols},{c.seed},{__version__}"

    @property
    def n_cells(self) -> int:
        return self.geometry.n_cells

    # -- indexing helpers ------------------------------------------------------------------
    def _as_index(self, cells: npt.NDArray[np.uint32], increasing: bool
                  ) -> slice | npt.NDArray[np.uint32]:
        """An increasing run of consecutive cells (the whole array, a block of rows)
        becomes a slice: no gather/scatter on the hot path. ``increasing``: the cells
        strictly increase (then they are consecutive exactly when last - first + 1 is
        their number)."""
        if increasing and cells.size and int(cells[-1]) - int(cells[0]) + 1 == cells.size:
            return slice(int(cells[0]), int(cells[-1]) + 1)
        return cells

    @staticmethod
    def _size(idx: slice | npt.NDArray[np.uint32]) -> int:
        return idx.stop - idx.start if isinstance(idx, slice) else idx.size

    def _blocks(self, idx: slice | npt.NDArray[np.uint32]
                ) -> Iterator[tuple[slice | npt.NDArray[np.uint32], slice]]:
        """Split work into cache-sized blocks: the elementwise chains then run from L2
        instead of main memory (about twice as fast on large arrays)."""
        n = self._size(idx)
        for start in range(0, n, _BLOCK):
            part = slice(start, min(start + _BLOCK, n))
            yield ((slice(idx.start + part.start, idx.start + part.stop)
                    if isinstance(idx, slice) else idx[part]), part)

    def _rounds(self, cells: npt.NDArray[np.uint32]) -> list[npt.NDArray[np.intp]] | None:
        """Positions of ``cells`` split into rounds with no repeated cell, in request order;
        None when no cell repeats (one round: all of them). Called for cells that do not
        strictly increase (those cannot repeat)."""
        self._seen[cells] = True
        unique = int(np.count_nonzero(self._seen)) == cells.size
        self._seen[cells] = False
        if unique:
            return None
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_cells)) + 1]
        group_start = np.repeat(starts, np.diff(np.r_[starts, cells.size]))
        rank = np.empty(cells.size, dtype=np.intp)
        rank[order] = np.arange(cells.size) - group_start
        return [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1)]

    # -- the chip's operations -------------------------------------------------------------
    def apply_pulses(
        self,
        cells: npt.ArrayLike,
        kind: PulseKind | str,
        amplitude_ua: npt.ArrayLike,
        width_ns: float,
    ) -> int:
        """One pulse on each listed cell (a cell listed twice gets two, in order).

        All or nothing: the whole batch is checked against the limits first. Amplitude 0 is
        valid and does nothing. Returns the number of pulses applied.
        """
        scalar = np.ndim(amplitude_ua) == 0
        kind, cell_arr, amp, _width = check_pulses(
            cells, kind, amplitude_ua, width_ns, self.n_cells, self.limits)
        return self._apply_checked(kind, cell_arr, amp[0] if scalar and amp.size else amp)

    def _apply_checked(self, kind: PulseKind, cell_arr: npt.NDArray[np.uint32],
                       amp: npt.NDArray[np.float32] | np.float32) -> int:
        """``apply_pulses`` after the limit checks (the in-process driver has made them,
        against the same limits). ``amp``: one float32 amplitude per cell, or one for all."""
        if cell_arr.size == 0:
            return 0
        timing = self.config.timing
        # the pulses take the command's time; the cells' age starts at its end, the time a
        # host reads from the clock after the command (protocols record it as last pulse)
        self._spend(timing.pulse_call_s + timing.pulse_per_cell_s * cell_arr.size)
        t = self.clock.now()
        apply = self.devices.apply_set if kind is PulseKind.SET else self.devices.apply_reset
        increasing = cell_arr.size < 2 or bool((cell_arr[1:] > cell_arr[:-1]).all())
        idx = self._as_index(cell_arr, increasing)
        rounds = None if increasing else self._rounds(cell_arr)
        scalar = np.ndim(amp) == 0
        batches = ([(idx, amp)] if rounds is None
                   else [(cell_arr[pos], amp if scalar else amp[pos]) for pos in rounds])
        for batch, batch_amp in batches:
            for sub, part in self._blocks(batch):
                apply(sub, batch_amp if scalar else batch_amp[part], t, self.rng)
                self.pulse_count[sub] += np.uint32(1)
        return int(cell_arr.size)

    def _spend(self, dt_s: float) -> None:
        """An operation's duration on the virtual clock (a wall clock runs by itself)."""
        if dt_s > 0 and isinstance(self.clock, VirtualClock):
            self.clock.advance(dt_s)

    def read(self, cells: npt.ArrayLike | None = None) -> F32:
        """Conductances in µS (drift plus correlated 1/f noise, never negative)."""
        idx: slice | npt.NDArray[np.uint32]
        if cells is None:
            idx = slice(0, self.n_cells)
        else:
            cell_arr = check_cells(cells, self.n_cells)
            if cell_arr.size == 0:
                return np.zeros(0, dtype=np.float32)
            increasing = cell_arr.size < 2 or bool((cell_arr[1:] > cell_arr[:-1]).all())
            idx = self._as_index(cell_arr, increasing)
        n = self._size(idx)
        out = np.empty(n, dtype=np.float32)
        for sub, part in self._blocks(idx):
            self._read_block(sub, out[part])
        timing = self.config.timing
        self._spend(timing.read_call_s + timing.read_per_cell_s * n)
        return out

    def _read_block(self, idx: slice | npt.NDArray[np.uint32], out: F32 | None = None
                    ) -> F32:
        """Read the devices ``idx`` into ``out`` (a new array if None)."""
        t = self.clock.now()
        dev = self.devices
        if out is None:
            out = np.empty(self._size(idx), dtype=np.float32)
        f32 = np.float32
        if dev.young(idx, t):
            # every device read within the minimum delay of its last pulse (a verify read):
            # the programmed state, and white noise of the minimum delay's variance
            g = dev.g_prog_us[idx]
            sigma = g * self._young_read_sigma
            sigma *= dev.q_s[idx]
            sigma *= self.rng.standard_normal(sigma.size, dtype=np.float32)
            np.add(g, sigma, out=out)
            return np.clip(out, f32(0.0), f32(np.inf), out=out)  # np.maximum, faster
        age = t - dev.t_prog_s[idx]
        g = dev.conductance_us(idx, t, self.rng, age)
        np.maximum(age, self.config.physics.min_read_delay_s, out=age)
        sigma = self.model.read_noise_log_factor(age.astype(np.float32))
        np.sqrt(sigma, out=sigma)
        sigma *= g
        sigma *= dev.q_s[idx]
        sigma *= self.noise.sample(idx, t, age, self.rng)
        np.add(g, sigma, out=out)
        return np.clip(out, f32(0.0), f32(np.inf), out=out)

    def mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:
        """ADC codes of an in-array matrix-vector product (``mock_chip.mvm``): ValueError
        (data out of range) for a request the chip cannot do, nothing done."""
        unit = self.mvm_unit
        if unit is None:
            raise NotImplementedError("this chip has no MVM capability")
        why = unit.check(request, self.geometry.rows, self.geometry.cols)
        if why is not None:
            raise ValueError(why)
        r = request.region
        rows = np.arange(r.row0, r.row0 + r.rows, dtype=np.int64)[:, None]
        cells = (rows * self.geometry.cols + r.col0 + np.arange(r.cols)).ravel()
        g = self._read_block(cells.astype(np.uint32)).reshape(r.rows, r.cols)
        codes = unit.compute(request, g, self.model.calibration.g_max_us, self.mvm_rng)
        timing = self.config.timing
        self._spend(timing.mvm_call_s + timing.mvm_per_vector_s * request.inputs.shape[0])
        return codes

    # -- for tests and analysis: the truth a real chip would not tell ----------------------
    def true_conductance_us(self, cells: npt.ArrayLike | None = None) -> F32:
        """Noiseless drifted conductance now."""
        idx = (slice(0, self.n_cells) if cells is None
               else check_cells(cells, self.n_cells))
        return self.devices.conductance_us(idx, self.clock.now(), self.rng)
