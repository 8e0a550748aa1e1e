"""Closed-loop iterative program-and-verify, written once against ``CrossbarDriver``.

Vectorized over the cells still in the loop: each iteration costs at most three driver
calls (RESET the overshot, SET the rest, verify-read both), whatever the number of cells.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from drivers.base import ChipInfo, CrossbarDriver
from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError, LimitError
from pcmlab.pulses import PulseKind, check_cells
from protocols.interrupt import StopToken, deferred_sigint

log = logging.getLogger(__name__)
_T = TypeVar("_T", bound=np.generic)


class AmplitudeCurve(StrictModel):
    """Chip-average programming curve: the SET amplitude whose saturation level is G,
    I(G) = I_th - s ln(1 - G / G_sat) (inverse of G_inf(I) = G_sat (1 - e^-(I - I_th)/s))."""

    g_sat_us: float = Field(32.0, gt=0)
    threshold_ua: float = Field(50.0, ge=0)
    scale_ua: float = Field(60.0, gt=0)

    def amplitude_ua(self, g_us: npt.ArrayLike) -> npt.NDArray[np.float32]:
        g = np.minimum(np.asarray(g_us, dtype=np.float64), 0.98 * self.g_sat_us)
        amp = self.threshold_ua - self.scale_ua * np.log1p(-g / self.g_sat_us)
        return amp.astype(np.float32)


class OvershootPolicy(str, enum.Enum):
    """What to do with a cell above its window: SET cannot lower a conductance."""

    RESET = "reset"  # RESET it and retry at a lower amplitude
    STOP = "stop"  # give up on it (left unconverged)


class ProgramVerifyConfig(StrictModel):
    """Settings of program-and-verify; the defaults converge on the mock's physics."""

    tolerance_abs_us: float = Field(0.5, ge=0, description="window half-width, fixed part")
    tolerance_rel: float = Field(0.04, ge=0, lt=1, description="window half-width, share of G_T")
    max_iterations: int = Field(20, ge=1, le=10_000, description="verify rounds per cell "
                                "before it counts as not converged")
    gain_ua_per_us: float = Field(2.0, gt=0, le=1000, description="amplitude step per µS error")
    initial_curve: AmplitudeCurve = Field(AmplitudeCurve(), description="first SET "
                                          "amplitude guess per target (a saturating curve)")
    overshoot: OvershootPolicy = Field(OvershootPolicy.RESET, description="a cell above "
                                       "its window: 'reset' and climb again, or 'skip'")
    overshoot_backoff_ua: float = Field(5.0, ge=0, description="extra step down after a RESET")
    overshoot_gain_factor: float = Field(
        0.5, gt=0, le=1, description="a cell's gain is multiplied by this at each overshoot")
    min_set_ua: float = Field(0.0, ge=0, description="lowest SET amplitude the loop uses")
    max_set_ua: float | None = Field(
        None, gt=0, description="highest SET amplitude the loop uses (default: chip limit)")
    set_width_ns: float = Field(500.0, gt=0, description="SET pulse width")
    reset_amplitude_ua: float = Field(470.0, gt=0, description="RESET pulse amplitude")
    reset_width_ns: float = Field(50.0, gt=0, description="RESET pulse width")
    record_traces: bool = Field(False, description="keep every iteration's verify reading "
                                "and amplitude (the file's /programming/traces)")
    max_batch_cells: int | Literal["auto"] | None = Field(
        None, description="most cells in one driver call: None sends all active cells at "
        "once; \"auto\" measures the chip's per-call cost first and keeps every call within "
        "call_budget_s ('pcmlab check' reports the same figures)")
    call_budget_s: float = Field(2.0, gt=0, description="with max_batch_cells = \"auto\"")
    allow_targets_below_resolution: bool = Field(
        False, description="program targets whose non-zero values all lie below the read "
        "resolution (refused by default: such targets are nearly always in siemens or "
        "millisiemens instead of µS, and would 'converge' without a pulse)")

    @model_validator(mode="after")
    def _consistent(self) -> ProgramVerifyConfig:
        if self.tolerance_abs_us == 0 and self.tolerance_rel == 0:
            raise ValueError("tolerance_abs_us and tolerance_rel are both 0: no cell could "
                             "ever converge; give a positive tolerance")
        if self.max_set_ua is not None and self.min_set_ua > self.max_set_ua:
            raise ValueError(f"min_set_ua={self.min_set_ua} is above max_set_ua={self.max_set_ua}")
        if isinstance(self.max_batch_cells, int) and self.max_batch_cells < 1:
            raise ValueError(f"max_batch_cells={self.max_batch_cells}: at least 1 cell per "
                             "call, \"auto\", or leave it out")
        return self

    def check_against(self, info: ChipInfo) -> None:
        """Refuse settings the chip cannot do, before any pulse is sent."""
        lim = info.limits
        if self.max_set_ua is not None and self.max_set_ua > lim.max_set_ua:
            raise LimitError(f"max_set_ua={self.max_set_ua} µA is above the chip's SET limit "
                             f"of {lim.max_set_ua} µA; lower it or leave it unset")
        if self.min_set_ua > lim.max_set_ua:
            raise LimitError(f"min_set_ua={self.min_set_ua} µA is above the chip's SET limit "
                             f"of {lim.max_set_ua} µA")
        if self.reset_amplitude_ua > lim.max_reset_ua:
            raise LimitError(f"reset_amplitude_ua={self.reset_amplitude_ua} µA is above the "
                             f"chip's RESET limit of {lim.max_reset_ua} µA")
        for name in ("set_width_ns", "reset_width_ns"):
            width = getattr(self, name)
            if not lim.min_width_ns <= width <= lim.max_width_ns:
                raise LimitError(f"{name}={width} ns is outside the chip's range "
                                 f"{lim.min_width_ns}..{lim.max_width_ns} ns")

    def read_resolution_us(self, info: ChipInfo) -> float:
        """The smallest conductance program-and-verify tells from a RESET cell: the verify
        window at G = 0 (``tolerance_abs_us``), at least an 8-bit read of the range
        (G_max / 256)."""
        return max(self.tolerance_abs_us, info.g_max_us / 256)

    def tolerance_us(self, target_us: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return (self.tolerance_abs_us + self.tolerance_rel * target_us).astype(np.float32)


@dataclass(frozen=True)
class ProgramProgress:
    iteration: int
    max_iterations: int
    n_converged: int
    n_total: int
    n_active: int


@dataclass
class ProgramResult:
    """Per-cell outcome of program-and-verify, in the order the cells were given."""

    cells: npt.NDArray[np.uint32]
    target_us: npt.NDArray[np.float32]
    g_us: npt.NDArray[np.float32]  # final verify reading
    iterations: npt.NDArray[np.uint16]
    converged: npt.NDArray[np.bool_]
    last_pulse_s: npt.NDArray[np.float64]  # chip clock
    end_s: float  # chip clock at the end of programming
    interrupted: bool = False
    n_driver_calls: int = 0
    traces: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    # pulses each cell received (the file keeps them: a cell's endurance across runs)
    set_pulses: npt.NDArray[np.uint32] | None = None
    reset_pulses: npt.NDArray[np.uint32] | None = None

    @property
    def converged_fraction_nonzero(self) -> float:
        nonzero = self.target_us > 0
        return float(self.converged[nonzero].mean()) if nonzero.any() else 1.0


ProgressCallback = Callable[[ProgramProgress], None]
# (SET pulses, RESET pulses) each cell has received so far, after every pulse call: a run
# file records them as they grow, so a run killed mid-programming still counts its pulses
PulseCallback = Callable[[npt.NDArray[np.uint32], npt.NDArray[np.uint32]], None]


def differential_targets(
    plus_cells: npt.ArrayLike, minus_cells: npt.ArrayLike, signed_target_us: npt.ArrayLike
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    """Targets for differential pairs G+ / G-: the device carrying the sign gets |G_T|, its
    partner 0 (left RESET). Returns (cells, per-device targets), plus devices first."""
    plus = np.asarray(plus_cells, dtype=np.uint32)
    minus = np.asarray(minus_cells, dtype=np.uint32)
    signed = np.asarray(signed_target_us, dtype=np.float32)
    if not plus.shape == minus.shape == signed.shape or plus.ndim != 1:
        raise ConfigError(f"plus_cells {plus.shape}, minus_cells {minus.shape} and "
                          f"signed_target_us {signed.shape} must be 1-D of one length")
    cells = np.concatenate([plus, minus])
    targets = np.concatenate([np.maximum(signed, 0), np.maximum(-signed, 0)])
    return cells, targets.astype(np.float32)


class BatchedDriver:
    """A driver whose calls carry at most ``max_cells`` cells each (split in order)."""

    def __init__(self, driver: CrossbarDriver, max_cells: int) -> None:
        self.driver, self.max_cells = driver, max_cells
        self.info, self.clock = driver.info, driver.clock
        self.calls = 0

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns) -> int:
        cells = np.asarray(cells)
        amps = np.broadcast_to(np.asarray(amplitude_ua, dtype=np.float32), cells.shape)
        applied = 0
        for i in range(0, cells.size, self.max_cells):
            applied += self.driver.apply_pulses(cells[i:i + self.max_cells], kind,
                                                amps[i:i + self.max_cells], width_ns)
            self.calls += 1
        return applied

    def read(self, cells=None):
        if cells is None:
            self.calls += 1
            return self.driver.read(None)
        cells = np.asarray(cells)
        parts = []
        for i in range(0, max(cells.size, 1), self.max_cells):
            parts.append(self.driver.read(cells[i:i + self.max_cells]))
            self.calls += 1
        return np.concatenate(parts).astype(np.float32, copy=False)


def batch_cells(driver: CrossbarDriver, cells: npt.NDArray[np.uint32],
                cfg: ProgramVerifyConfig) -> int | None:
    """How many cells one driver call carries: as configured, or (``"auto"``) the largest
    batch that the chip's measured latency and per-cell cost keep within the budget."""
    if cfg.max_batch_cells != "auto":
        return cfg.max_batch_cells
    from protocols.timing import measure_timing

    probe = cells[:min(cells.size, 4096)]
    fits = measure_timing(driver, probe, driver.apply_pulses, cfg.set_width_ns,
                          sizes=(1, 64, 1024), repeats=2)  # amplitude 0: no effect
    batch = min(f.cells_within(cfg.call_budget_s) for f in fits.values())
    log.info("program-and-verify: %d cells per call (pulse %.2f ms + %.3f us/cell, read "
             "%.2f ms + %.3f us/cell, budget %.2f s)", batch, fits["pulse"].latency_s * 1e3,
             fits["pulse"].per_cell_s * 1e6, fits["read"].latency_s * 1e3,
             fits["read"].per_cell_s * 1e6, cfg.call_budget_s)
    return batch


def _float32_at_most(x: float) -> np.float32:
    """The largest float32 not above ``x``: amplitudes travel as float32, and rounding
    must never carry one over a limit."""
    y = np.float32(x)
    return np.nextafter(y, np.float32(-np.inf)) if float(y) > x else y


def _gather(values: npt.NDArray[_T], at: slice | npt.NDArray[np.intp]) -> npt.NDArray[_T]:
    """``values[at]``: a view for a slice, ``np.take`` (faster than fancy indexing) for
    indices."""
    return values[at] if isinstance(at, slice) else np.take(values, at)


def check_targets(info: ChipInfo, cells: npt.ArrayLike, target_us: npt.ArrayLike
                  ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    """Cells and targets as program-and-verify takes them, or ConfigError naming the first
    bad value and how many there are."""
    cell_arr = np.asarray(cells)
    tgt = np.asarray(target_us, dtype=np.float32)
    if cell_arr.ndim != 1 or tgt.shape != cell_arr.shape:
        raise ConfigError(f"{cell_arr.size} cells but {tgt.size} targets: give one target "
                          "(µS) per cell, both 1-D")
    cell_arr = check_cells(cell_arr, info.n_cells)
    seen = np.zeros(info.n_cells, dtype=np.bool_)
    seen[cell_arr] = True
    if np.count_nonzero(seen) != cell_arr.size:
        raise ConfigError("a cell appears twice in the targets: give each cell one target")
    if cell_arr.size == 0:
        raise ConfigError("no cells to program: give at least one cell and its target")
    bad = np.flatnonzero(~np.isfinite(tgt))
    if bad.size:
        raise ConfigError(f"{bad.size} target(s) are NaN or infinite, the first "
                          f"{float(tgt[bad[0]])} for cell {int(cell_arr[bad[0]])}; give µS "
                          "values in 0..G_max")
    low, high = np.flatnonzero(tgt < 0), np.flatnonzero(tgt > info.g_max_us)
    if low.size:
        raise ConfigError(f"{low.size} target(s) are negative, the first {float(tgt[low[0]])} "
                          f"µS for cell {int(cell_arr[low[0]])}; conductances are 0.."
                          f"{info.g_max_us} µS (a negative weight goes on the minus device of "
                          "its differential pair)")
    if high.size:
        top = float(tgt.max())
        unit = (f"; they look like nanosiemens (nS): divide by 1e3 to give µS ({top:g} nS = "
                f"{top / 1e3:g} µS)" if top / 1e3 <= info.g_max_us else "")
        raise ConfigError(f"{high.size} target(s) are above the chip's {info.g_max_us} µS, "
                          f"the first {float(tgt[high[0]])} µS for cell "
                          f"{int(cell_arr[high[0]])}{unit}; lower them (or map weights with a "
                          "larger W_max)")
    return cell_arr, tgt


# Units a number given as µS may really be in: (name, factor to µS).
_SMALL_UNITS = (("siemens (S)", "1e6", 1e6), ("millisiemens (mS)", "1e3", 1e3))


def check_target_unit(info: ChipInfo, target_us: npt.ArrayLike,
                      config: ProgramVerifyConfig) -> None:
    """Refuse targets only a wrong unit explains: non-zero values that all lie below the
    read resolution (they would read as converged from the RESET state, without a pulse),
    naming the likely unit; ``config.allow_targets_below_resolution`` lets them through."""
    resolution = config.read_resolution_us(info)
    if config.allow_targets_below_resolution:
        return
    tgt = np.asarray(target_us)
    top_any = float(tgt.max()) if tgt.size else 0.0
    if np.isfinite(top_any) and top_any >= resolution:
        return  # no NaN nor inf, so the largest finite value is this one: one pass
    tgt = np.asarray(tgt, dtype=np.float64)
    nonzero = tgt[np.isfinite(tgt) & (tgt > 0)]
    if nonzero.size == 0:
        return
    top = float(nonzero.max())
    if top >= resolution:
        return
    unit = next((f"they look like {name}: multiply by {text} to give µS ({top:g} x {text} "
                 f"= {top * factor:g} µS)" for name, text, factor in _SMALL_UNITS
                 if resolution <= top * factor <= info.g_max_us),
                "check their unit: targets are in µS")
    raise ConfigError(
        f"all {nonzero.size} non-zero targets lie below the chip's read resolution of "
        f"{resolution:g} µS (largest {top:g} µS), so program-and-verify would call them "
        f"converged without a pulse; {unit}; to program them as given, pass "
        "--allow-targets-below-resolution (allow_targets_below_resolution = true in the "
        "program-and-verify settings)")


def program_and_verify(
    driver: CrossbarDriver,
    cells: npt.ArrayLike,
    target_us: npt.ArrayLike,
    config: ProgramVerifyConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    stop: StopToken | None = None,
    pulses: PulseCallback | None = None,
) -> ProgramResult:
    """Program each cell to its target conductance (µS) and verify it.

    Every cell is RESET first; zero targets stay RESET (re-RESET until they read within
    the window). Returns the partial result, marked interrupted, on Ctrl-C or ``stop``.
    ``pulses(n_set, n_reset)`` is told the pulse counts so far after every pulse call.
    """
    cfg = config or ProgramVerifyConfig()
    info = driver.info
    cfg.check_against(info)
    cells_arr, target = check_targets(info, cells, target_us)
    check_target_unit(info, target, cfg)
    batch = batch_cells(driver, cells_arr, cfg)
    if batch is not None and batch < cells_arr.size:
        driver = BatchedDriver(driver, batch)
    stop = stop or StopToken()
    n = cells_arr.size
    tol = cfg.tolerance_us(target)
    max_set = _float32_at_most(cfg.max_set_ua if cfg.max_set_ua is not None
                               else info.limits.max_set_ua)
    amp = np.clip(cfg.initial_curve.amplitude_ua(target), cfg.min_set_ua, max_set)
    gain = np.full(n, cfg.gain_ua_per_us, dtype=np.float32)
    g = np.full(n, np.nan, dtype=np.float32)
    iterations = np.zeros(n, dtype=np.uint16)
    converged = np.zeros(n, dtype=np.bool_)
    last_pulse = np.full(n, np.nan, dtype=np.float64)
    zero = target == 0
    n_set = np.zeros(n, dtype=np.uint32)
    n_reset = np.zeros(n, dtype=np.uint32)
    calls = 0
    trace_g: list[npt.NDArray[np.float32]] = []
    trace_amp: list[npt.NDArray[np.float32]] = []
    interrupted = False

    # The loop works on index arrays of the cells still in it (ascending, as the driver
    # receives them), never on whole-array masks: late iterations touch a few % of cells.
    rs = np.arange(n, dtype=np.intp)  # iteration 0: RESET everything and verify
    ss = np.zeros(0, dtype=np.intp)
    nxt_touched = rs  # the cells under a pulse next, both kinds (the union of rs and ss)
    n_converged = 0

    def report(iteration: int, n_active: int) -> None:
        if progress is not None:
            progress(ProgramProgress(iteration, cfg.max_iterations, n_converged, n, n_active))

    with deferred_sigint(stop):
        for it in range(0, cfg.max_iterations + 1):
            if rs.size:
                driver.apply_pulses(cells_arr[rs], PulseKind.RESET, cfg.reset_amplitude_ua,
                                    cfg.reset_width_ns)
                calls += 1
                n_reset[rs] += 1
                if pulses is not None:
                    pulses(n_set, n_reset)
                last_pulse[rs] = driver.clock.now()
                if stop.requested:
                    interrupted = True
                    break
            if ss.size:
                driver.apply_pulses(cells_arr[ss], PulseKind.SET, amp[ss], cfg.set_width_ns)
                calls += 1
                n_set[ss] += 1
                if pulses is not None:
                    pulses(n_set, n_reset)
                last_pulse[ss] = driver.clock.now()
                if stop.requested:
                    interrupted = True
                    break
            # rs and ss are both drawn from the last touched cells (ascending), so their
            # union is those cells under either mask: no merge needed
            touched = rs if not ss.size else (ss if not rs.size else nxt_touched)
            if touched.size == 0:
                break
            g_read = np.asarray(driver.read(cells_arr[touched]), dtype=np.float32)  # as g holds
            # every cell (iteration 0): views, not gathers
            at = slice(None) if touched.size == n else touched
            g[at] = g_read
            calls += 1
            if it > 0:
                iterations[at] += 1
            # the touched cells' values gathered once each (the same numbers); boolean
            # selections by np.compress and gathers by np.take: the same elements, several
            # times faster than mask indexing on the loop's half-true masks
            err = _gather(target, at) - g_read
            tol_touched, zero_touched = _gather(tol, at), _gather(zero, at)
            ok = np.abs(err) <= tol_touched
            n_ok = int(np.count_nonzero(ok))
            if n_ok:
                converged[np.compress(ok, touched)] = True
            n_converged += n_ok
            # every cell that still needs a pulse was touched: its next step is decided here
            # zero targets that still read high: RESET again
            reset_next = ~ok & zero_touched
            # SET cells: feedback on the error; overshoot handled by policy
            live = ~ok
            live &= ~zero_touched
            over = live & (err < -tol_touched)
            if cfg.overshoot is OvershootPolicy.RESET:
                # one gather and one scatter for every live cell: amp + gain * err, less the
                # backoff where over, clipped (the same operations, in the same order)
                idx_live = np.compress(live, touched)
                over_live = np.compress(live, over)
                gain_live = np.take(gain, idx_live)
                step = np.take(amp, idx_live)
                step += gain_live * np.compress(live, err)
                np.subtract(step, np.float32(cfg.overshoot_backoff_ua), out=step,
                            where=over_live)
                amp[idx_live] = np.clip(step, cfg.min_set_ua, max_set)
                np.multiply(gain_live, np.float32(cfg.overshoot_gain_factor), out=gain_live,
                            where=over_live)
                gain[idx_live] = gain_live
                reset_next |= over
                set_next, ss = live, idx_live
            else:
                under = live & ~over
                idx_under = np.compress(under, touched)
                amp[idx_under] = np.clip(amp[idx_under] + gain[idx_under] * np.compress(under, err),
                                         cfg.min_set_ua, max_set)
                set_next, ss = under, idx_under
            rs = np.compress(reset_next, touched)
            nxt = reset_next | set_next
            # the union, needed only when both kinds of pulse follow
            nxt_touched = (np.compress(nxt, touched) if rs.size and ss.size
                           else (rs if rs.size else ss))
            if it > 0 and cfg.record_traces:
                trace_g.append(g.copy())
                trace_amp.append(amp.copy())
            report(it, nxt_touched.size)
            if stop.requested:
                interrupted = True
                break
            if it == cfg.max_iterations or not (rs.size or ss.size):
                break
    traces = {}
    if cfg.record_traces and trace_g:
        traces = {"conductance_us": np.stack(trace_g), "amplitude_ua": np.stack(trace_amp)}
    result = ProgramResult(
        cells=cells_arr, target_us=target, g_us=g, iterations=iterations,
        converged=converged, last_pulse_s=last_pulse, end_s=driver.clock.now(),
        interrupted=interrupted, n_driver_calls=calls, traces=traces,
        set_pulses=n_set, reset_pulses=n_reset,
    )
    log.info("program-and-verify: %d cells, %.2f %% of non-zero converged, %d driver calls%s",
             n, 100 * result.converged_fraction_nonzero, calls,
             " (interrupted)" if interrupted else "")
    return result


def program_pairs(
    driver: CrossbarDriver,
    cells: npt.ArrayLike,
    target_us: npt.ArrayLike,
    plus: npt.ArrayLike,
    minus: npt.ArrayLike,
    config: ProgramVerifyConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    stop: StopToken | None = None,
    pulses: PulseCallback | None = None,
) -> ProgramResult:
    """Program differential pairs, then compensate pairs with a stuck device.

    ``plus`` and ``minus`` are positions into ``cells`` of each pair's G+ and G-. After
    program-and-verify, a device that did not converge is taken as stuck at its last verify
    reading G_s, and its partner is programmed again so that the pair's difference is the
    intended one: partner target G_s - (G+ - G-) target for a stuck G+, G_s + (...) for a
    stuck G-. A partner target above G_max is lowered to G_max (the best the pair can do;
    logged), one below 0 is left alone. A stuck-SET device on the zero side of a weight is
    otherwise an error of a full W_max. The result's ``target_us`` holds the targets
    actually programmed.
    """
    cfg = config or ProgramVerifyConfig()
    p = np.asarray(plus, dtype=np.intp)
    m = np.asarray(minus, dtype=np.intp)
    result = program_and_verify(driver, cells, target_us, cfg, progress=progress, stop=stop,
                                pulses=pulses)
    if result.interrupted:
        return result
    tgt = result.target_us.copy()
    diff = tgt[p] - tgt[m]
    g = result.g_us
    g_max = driver.info.g_max_us
    stuck_p = ~result.converged[p] & result.converged[m]
    stuck_m = ~result.converged[m] & result.converged[p]
    new_m = g[p] - diff  # partner of a stuck G+
    new_p = g[m] + diff  # partner of a stuck G-
    fix_m = stuck_p & (new_m > 0)
    fix_p = stuck_m & (new_p > 0)
    capped = int((fix_m & (new_m > g_max)).sum() + (fix_p & (new_p > g_max)).sum())
    new_m, new_p = np.minimum(new_m, g_max), np.minimum(new_p, g_max)
    redo = np.concatenate([m[fix_m], p[fix_p]])
    if redo.size == 0:
        return result
    if capped:
        log.info("%d compensating targets were above G_max = %g µS and were set to G_max",
                 capped, g_max)
    tgt[m[fix_m]] = new_m[fix_m]
    tgt[p[fix_p]] = new_p[fix_p]
    log.info("compensating %d pairs with a stuck device by re-programming the partner",
             redo.size)
    # compensating targets may all be small (a partner a few tenths of a µS above its
    # stuck device): they are the protocol's, not a user's in another unit
    def pulses_again(n_set_redo: npt.NDArray[np.uint32],
                     n_reset_redo: npt.NDArray[np.uint32]) -> None:
        n_set, n_reset = result.set_pulses.copy(), result.reset_pulses.copy()
        n_set[redo] += n_set_redo
        n_reset[redo] += n_reset_redo
        pulses(n_set, n_reset)

    again = program_and_verify(driver, result.cells[redo], tgt[redo],
                               cfg.model_copy(update={"allow_targets_below_resolution": True}),
                               stop=stop, pulses=None if pulses is None else pulses_again)
    g_us = result.g_us.copy()
    g_us[redo] = again.g_us
    iterations = result.iterations.copy()
    iterations[redo] += again.iterations
    converged = result.converged.copy()
    converged[redo] = again.converged
    last = result.last_pulse_s.copy()
    last[redo] = again.last_pulse_s
    n_set, n_reset = result.set_pulses.copy(), result.reset_pulses.copy()
    n_set[redo] += again.set_pulses
    n_reset[redo] += again.reset_pulses
    return ProgramResult(
        cells=result.cells, target_us=tgt, g_us=g_us, iterations=iterations,
        converged=converged, last_pulse_s=last, end_s=again.end_s,
        interrupted=again.interrupted, n_driver_calls=result.n_driver_calls +
        again.n_driver_calls, traces=result.traces, set_pulses=n_set, reset_pulses=n_reset)
