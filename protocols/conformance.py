"""``pcmlab check``: does a chip, or a driver, keep the contract every protocol relies on?

Two layers. Through the driver's public API (any driver, plugins included): identity,
limits refused before anything is applied, all-or-nothing batches, a cell listed twice
pulsed twice, SET raises and RESET lowers, cell reads agree with the full-array read, a
clock that never goes backwards and advances by what was asked. On the wire (SCPI; see
``protocols.conformance_wire``): the firmware's own refusals, the error queue, and
exactly-once pulse batches across a repeat and a new connection. Physics figures (read
noise, programmed spread, drift exponent) are reported beside the calibrated model, never
failed. Every pulse stays inside the cells the user gave.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from drivers.base import ChipInfo, CrossbarDriver
from pcmlab.errors import ConfigError, LimitError
from pcmlab.pcm_model import PCMModel
from pcmlab.pulses import PulseKind
from protocols.conformance_rules import (
    DRIVER_RULES,
    RULES,
    WIRE_RULES,
    CheckConfig,
    CheckResult,
    raised,
    results_json,
)
from protocols.conformance_wire import scpi_wire_checks, serial_wire_checks
from protocols.program_verify import ProgramVerifyConfig, program_and_verify
from protocols.timing import measure_timing

__all__ = ["CheckConfig", "CheckResult", "ConformanceSuite", "check_chip", "parse_cells",
           "results_json"]

log = logging.getLogger(__name__)

MIN_CELLS = 64
CALL_BUDGET_S = 2.0  # a driver call this long is still well inside common timeouts


def write_report(path: str | Path, results: list[CheckResult], info: ChipInfo,
                 cells: npt.ArrayLike, resource: str | None = None) -> str:
    """Write the results as JSON (with the chip, the cells the checks may pulse and a run
    id) and register the report in the catalog; returns its run id."""
    from pcmlab.catalog.records import cell_ranges, new_run_id
    from pcmlab.catalog.registration import register_file

    run_id = new_run_id()
    c = np.asarray(cells, dtype=np.int64)
    Path(path).write_text(results_json(
        results, run_id=run_id, driver=info.identity, resource=resource,
        cells={"start": int(c.min()), "stop": int(c.max()) + 1, "n": int(c.size)}),
        encoding="utf-8")
    register_file("check", path, run_id=run_id, chip_identity=info.identity,
                  driver=info.identity, resource=resource, n_cells=int(c.size),
                  geometry={"rows": info.geometry.rows, "cols": info.geometry.cols,
                            "arrays": info.arrays},
                  cells=cell_ranges(c, "pulsed"),
                  meta={"failed": [r.rule for r in results if r.status == "fail"]})
    return run_id


class _Region:
    """The cells a check may pulse, split into disjoint groups."""

    def __init__(self, cells: npt.NDArray[np.uint32]) -> None:
        self.cells = cells
        self._next = 0

    def take(self, n: int) -> npt.NDArray[np.uint32]:
        if self._next + n > self.cells.size:
            self._next = 0  # reuse from the start: every check RESETs what it uses
        out = self.cells[self._next:self._next + n]
        self._next += n
        return out


class _Guard:
    """The driver, with every pulse checked to stay inside the region (the rest of the
    array is never touched, whatever a check does)."""

    def __init__(self, driver: CrossbarDriver, region: npt.NDArray[np.uint32]) -> None:
        self.driver = driver
        self._allowed = np.zeros(driver.info.n_cells, dtype=bool)
        self._allowed[region] = True

    def pulse(self, cells: npt.ArrayLike, kind: PulseKind, amplitude_ua: npt.ArrayLike,
              width_ns: float) -> int:
        c = np.asarray(cells, dtype=np.int64)
        inside = (c >= 0) & (c < self._allowed.size)
        if not np.all(self._allowed[c[inside]]):
            raise AssertionError("a check tried to pulse outside its cells")
        return self.driver.apply_pulses(cells, kind, amplitude_ua, width_ns)


class ConformanceSuite:
    """The driver-level checks on ``cells`` of ``driver``."""

    def __init__(self, driver: CrossbarDriver, cells: npt.ArrayLike,
                 config: CheckConfig | None = None) -> None:
        self.driver = driver
        info = driver.info
        c = np.unique(np.asarray(cells, dtype=np.int64))
        if c.size < MIN_CELLS:
            raise ConfigError(f"the checks need at least {MIN_CELLS} cells, got {c.size}; "
                              "give a larger --cells START:STOP")
        if c[0] < 0 or c[-1] >= info.n_cells:
            raise ConfigError(f"cells {c[0]}..{c[-1]} are outside the chip's {info.n_cells} "
                              f"cells (0..{info.n_cells - 1})")
        self.cells = c.astype(np.uint32)
        self.cfg = config or CheckConfig()
        self.guard = _Guard(driver, self.cells)
        self.set_ua, self.reset_ua, self.set_w, self.reset_w = self.cfg.pulses(info.limits)
        self.region = _Region(self.cells)

    # -- helpers ---------------------------------------------------------------------------
    def _reset(self, cells: npt.NDArray[np.uint32]) -> None:
        self.guard.pulse(cells, PulseKind.RESET, self.reset_ua, self.reset_w)

    def _read(self, cells: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
        return self.driver.read(cells).astype(np.float64)

    @staticmethod
    def _unchanged(before: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> bool:
        """No pulse reached these cells: changes within read noise (a pulse of this size
        moves a cell by several µS)."""
        return bool(np.max(np.abs(after - before)) < 1.5 + 0.1 * np.max(np.abs(before)))

    # -- the checks ------------------------------------------------------------------------
    def checks(self) -> dict[str, Callable[[], CheckResult]]:
        """Each driver-level rule (by its name in ``RULES``) and its check."""
        return {"identity": self.identity, "limits": self.limits_refused,
                "all-or-nothing": self.all_or_nothing, "duplicates": self.duplicates,
                "set-reset": self.set_and_reset, "read-agreement": self.read_agreement,
                "clock": self.clock, "mvm-agreement": self.mvm_agreement,
                "physics": self.physics, "timing": self.timing}

    def run(self) -> list[CheckResult]:
        checks = self.checks()
        assert tuple(checks) == DRIVER_RULES, "the suite and the rule table disagree"
        out = []
        for rule, check in checks.items():
            try:
                result = check()
                if result.rule != rule:
                    raise AssertionError(f"the {rule} check reported as {result.rule}")
            except Exception as exc:  # the driver raised where the contract has an answer
                result = raised(rule, exc)
            out.append(result)
            log.info("%s: %s", rule, result.status)
        return out

    def identity(self) -> CheckResult:
        ident = self.driver.info.identity
        fields = [f.strip() for f in ident.split(",")]
        ok = len(fields) == 4 and all(fields)
        return CheckResult("identity", "identity has the four IEEE 488.2 fields",
                           "pass" if ok else "fail", repr(ident),
                           "maker,model,serial,firmware identify the chip in every file"
                           if ok else "files and plugins cannot tell which chip this is")

    def limits_refused(self) -> CheckResult:
        info = self.driver.info
        lim = info.limits
        cells = self.region.take(8)
        self._reset(cells)
        before = self._read(cells)
        bad: list[tuple[str, Callable[[], object]]] = [
            (f"SET {1.5 * lim.max_set_ua:g} µA", lambda: self.guard.pulse(
                cells, PulseKind.SET, 1.5 * lim.max_set_ua, self.set_w)),
            (f"RESET {1.5 * lim.max_reset_ua:g} µA", lambda: self.guard.pulse(
                cells, PulseKind.RESET, 1.5 * lim.max_reset_ua, self.reset_w)),
            ("amplitude NaN", lambda: self.guard.pulse(
                cells, PulseKind.SET, float("nan"), self.set_w)),
            ("amplitude -1 µA", lambda: self.guard.pulse(cells, PulseKind.SET, -1.0,
                                                          self.set_w)),
            (f"width {2 * lim.max_width_ns:g} ns", lambda: self.guard.pulse(
                cells, PulseKind.SET, self.set_ua, 2 * lim.max_width_ns)),
            (f"cell {info.n_cells}", lambda: self.guard.pulse(
                np.array([info.n_cells], dtype=np.uint32), PulseKind.SET, self.set_ua,
                self.set_w)),
        ]
        accepted = []
        for label, call in bad:
            try:
                call()
                accepted.append(label)
            except LimitError:
                pass
        changed = not self._unchanged(before, self._read(cells))
        ok = not accepted and not changed
        figure = ("6 of 6 refused with LimitError, no cell changed" if ok else
                  f"accepted: {', '.join(accepted) or 'none'}; cells changed: {changed}")
        return CheckResult("limits", "out-of-limit requests are refused before anything is "
                           "applied", "pass" if ok else "fail", figure,
                           "a request outside the limits never reaches a device" if ok else
                           "a clipped or accepted pulse looks like a slow or odd device")

    def all_or_nothing(self) -> CheckResult:
        cells = self.region.take(16)
        self._reset(cells)
        before = self._read(cells)
        amps = np.full(cells.size, self.set_ua, dtype=np.float64)
        amps[-1] = 2 * self.driver.info.limits.max_set_ua  # one bad record at the end
        try:
            self.guard.pulse(cells, PulseKind.SET, amps, self.set_w)
            refused = False
        except LimitError:
            refused = True
        after = self._read(cells)
        ok = refused and self._unchanged(before[:-1], after[:-1])
        moved = float(np.max(after[:-1] - before[:-1]))
        return CheckResult("all-or-nothing", "a batch with one bad record is refused whole",
                           "pass" if ok else "fail",
                           f"refused: {refused}; largest change of a good record "
                           f"{moved:.2f} µS",
                           "a batch is applied entirely or not at all" if ok else
                           "part of a refused batch was applied: program-and-verify loses "
                           "track of the devices")

    def duplicates(self) -> CheckResult:
        cells = self.region.take(64)
        twice, once = cells[:32], cells[32:64]
        self._reset(cells)
        batch = np.concatenate([twice, twice, once])
        n = self.guard.pulse(batch, PulseKind.SET, self.set_ua, self.set_w)
        g2, g1 = self._read(twice), self._read(once)
        se = math.sqrt(g2.var() / g2.size + g1.var() / g1.size) or 1e-9
        z = (g2.mean() - g1.mean()) / se
        ok = n == batch.size and z > 3
        return CheckResult("duplicates", "a cell listed twice in one batch gets two pulses",
                           "pass" if ok else "fail",
                           f"{n} of {batch.size} counted; mean G twice {g2.mean():.2f} vs "
                           f"once {g1.mean():.2f} µS (z = {z:.1f})",
                           "batches are applied record by record" if ok else
                           "repeated cells are merged or not counted: iterations and "
                           "pulse counts are wrong")

    def set_and_reset(self) -> CheckResult:
        cells = self.region.take(32)
        self._reset(cells)
        g0 = self._read(cells)
        self.guard.pulse(cells, PulseKind.SET, self.set_ua, self.set_w)
        g1 = self._read(cells)
        self._reset(cells)
        g2 = self._read(cells)
        up, down = float(np.median(g1 - g0)), float(np.median(g1 - g2))
        ok = up > 1.0 and down > 1.0
        return CheckResult("set-reset", "a SET raises and a RESET lowers the conductance",
                           "pass" if ok else "fail",
                           f"SET {self.set_ua:.0f} µA: +{up:.2f} µS; RESET "
                           f"{self.reset_ua:.0f} µA: -{down:.2f} µS (medians)",
                           "pulse kinds reach the devices as named" if ok else
                           "SET and RESET are swapped or ineffective")

    def read_agreement(self) -> CheckResult:
        cells = self.region.take(64)
        self.guard.pulse(cells, PulseKind.SET, self.set_ua, self.set_w)
        part = self._read(cells)
        again = self._read(cells)  # the chip's own read-to-read noise sets the scale
        full = self.driver.read(None)
        n = self.driver.info.n_cells
        if full.shape != (n,):
            return CheckResult("read-agreement", "a read of the cells agrees with the "
                               "full-array read", "fail", f"full read has shape {full.shape} "
                               f"for {n} cells", "the full-array read is not the array")
        diff = np.abs(full[cells].astype(np.float64) - part)
        noise = float(np.median(np.abs(again - part)))
        ok = (bool(np.median(diff) < 3 * noise + 0.05) and bool(np.isfinite(full).all())
              and bool((full >= 0).all()))
        return CheckResult("read-agreement", "a read of the cells agrees with the full-array "
                           "read", "pass" if ok else "fail",
                           f"median |difference| {np.median(diff):.3f} µS over {cells.size} "
                           f"cells, two cell reads differ by {noise:.3f} µS",
                           "cell order and units agree in both reads" if ok else
                           "the two reads disagree: wrong order, stale data or units")

    def _rectangle(self, width: int = 16, min_rows: int = 4) -> tuple[int, int, int, int] | None:
        """(row0, col0, rows, cols) of a block of the check's cells, or None."""
        cols = self.driver.info.geometry.cols
        allowed = np.zeros(self.driver.info.n_cells, dtype=bool)
        allowed[self.cells] = True
        first = int(self.cells[0])
        r0, c0 = divmod(first, cols)
        w = min(width, cols - c0) // 2 * 2
        if w < 4:
            return None
        rows = 0
        while (r0 + rows) * cols + c0 + w <= allowed.size and allowed[
                (r0 + rows) * cols + c0:(r0 + rows) * cols + c0 + w].all() and rows < 32:
            rows += 1
        return (r0, c0, rows, w) if rows >= min_rows else None

    def mvm_agreement(self) -> CheckResult:
        title = "the chip's matrix-vector products agree with its reads"
        spec = self.driver.info.mvm
        if spec is None:
            dialect = getattr(self.driver, "dialect", None)  # an SCPI driver's words
            if dialect is not None and not dialect.has("mvm_config"):
                return CheckResult("mvm-agreement", title, "skip", f"the dialect "
                                   f"'{dialect.name}' defines no MVM operation, so the chip's "
                                   "MVM (if it has one) cannot be used",
                                   "chip mode is off through this dialect; a chip that "
                                   "computes in the array needs mvm_config and mvm in the "
                                   "dialect file (docs/writing-a-driver.md)")
            return CheckResult("mvm-agreement", title, "skip", "the chip has no MVM "
                               "capability", "chip mode is not available on this chip")
        rect = self._rectangle()
        if rect is None:
            return CheckResult("mvm-agreement", title, "skip", "the cells hold no block of "
                               "4 rows x 4 columns", "give --cells covering a few rows")
        r0, c0, rows, w = rect
        cols = self.driver.info.geometry.cols
        cells = ((np.arange(r0, r0 + rows)[:, None] * cols) + c0 + np.arange(w)).ravel()
        cells = cells.astype(np.uint32)
        self._reset(cells)
        self.guard.pulse(cells[0::2], PulseKind.SET, self.set_ua, self.set_w)  # G+ columns
        g = self._read(cells).reshape(rows, w) / self.driver.info.g_max_us
        x = np.random.default_rng(0).integers(-spec.dac_max, spec.dac_max + 1, (64, rows))
        fs = max(float(np.abs(x / spec.dac_max @ g).max()), 1e-3) * 1.2
        codes = self.driver.mvm((r0, c0, rows, w), x, full_scale=fs).astype(np.float64)
        s = (x / spec.dac_max) @ g
        expected = (s[:, 0::2] - s[:, 1::2]) / fs * spec.adc_max
        err = float(np.median(np.abs(codes - expected)))
        scale = float(np.median(np.abs(expected)))
        ok = codes.shape == expected.shape and err <= 2.0 + 0.1 * scale
        self._reset(cells)
        return CheckResult("mvm-agreement", title, "pass" if ok else "fail",
                           f"{rows} x {w} cells, 64 vectors: median |code - predicted from "
                           f"reads| {err:.2f} LSB (median |code| {scale:.1f})",
                           "chip mode computes what the conductances say" if ok else
                           "the products disagree with the reads: order, sign or scale")

    def clock(self) -> CheckResult:
        clock = self.driver.clock
        times = [clock.now() for _ in range(20)]
        monotone = all(b >= a for a, b in itertools.pairwise(times))
        virtual = self.driver.info.virtual_clock
        step = 100.0 if virtual else 0.2
        t0 = clock.now()
        got = clock.sleep_until(t0 + step)
        after = clock.now()
        advanced = after - t0
        ok = monotone and got >= t0 + step and after >= got and (
            advanced < step + 5.0 if virtual else True)
        return CheckResult("clock", "the clock never goes backwards and advances by what was "
                           "asked", "pass" if ok else "fail",
                           f"20 reads {'non-decreasing' if monotone else 'NOT monotone'}; "
                           f"asked +{step:g} s, moved +{advanced:.3f} s "
                           f"({'virtual' if virtual else 'wall'} clock)",
                           "times since programming are right" if ok else
                           "readout times and drift exponents would be wrong")

    def physics(self) -> CheckResult:
        """Read noise, programmed spread at t0 and drift exponent beside the model."""
        pcm = PCMModel()
        cells = self.region.take(min(self.cells.size, 256))
        pv = ProgramVerifyConfig(set_width_ns=self.set_w, reset_width_ns=self.reset_w,
                                 reset_amplitude_ua=min(ProgramVerifyConfig().reset_amplitude_ua,
                                                        self.reset_ua))
        target = np.full(cells.size, self.cfg.level_us, dtype=np.float32)
        result = program_and_verify(self.driver, cells, target, pv)
        ok = result.converged
        clock = self.driver.clock
        t0 = pcm.calibration.t0_s
        clock.sleep_until(result.end_s + t0)
        reads = np.stack([self._read(cells[ok]) for _ in range(5)])
        g_t0 = reads.mean(axis=0)
        read_rel = float(np.median(reads.std(axis=0, ddof=1) / np.maximum(g_t0, 1e-3)))
        spread = float(np.std(reads[0] - self.cfg.level_us))
        parts = [f"{100 * ok.mean():.1f} % converged at {self.cfg.level_us:g} µS",
                 f"spread at t0 {spread:.2f} µS (model "
                 f"{float(pcm.total_sigma_us(self.cfg.level_us, t0)):.2f})",
                 f"read noise {100 * read_rel:.2f} % of G"]
        if self.driver.info.virtual_clock:
            t1 = 100 * t0
            clock.sleep_until(result.end_s + t1)
            g1 = self._read(cells[ok])
            nu = -np.log(np.maximum(g1, 1e-3) / np.maximum(g_t0, 1e-3)) / math.log(t1 / t0)
            parts.append(f"drift exponent {float(np.median(nu)):.3f} (model "
                         f"{float(pcm.drift_nu_mean(self.cfg.level_us)):.3f})")
        else:
            parts.append("drift exponent not measured (wall clock: see 'pcmlab characterize')")
        self._reset(cells)
        return CheckResult("physics", "read noise, programmed spread and drift beside the "
                           "calibrated model", "info", "; ".join(parts),
                           "a real chip may differ: 'pcmlab characterize' and 'pcmlab fit' "
                           "calibrate the model to it")

    def timing(self) -> CheckResult:
        """Per-call cost of pulse batches and reads against batch size: latency + per-cell
        cost, and the batch size above which calls stop being latency-bound."""
        fits = measure_timing(self.driver, self.cells, self.guard.pulse, self.set_w)
        text = "; ".join(f"{name}: {f.latency_s * 1e3:.2f} ms + {f.per_cell_s * 1e6:.3f} µs "
                         f"per cell (latency-bound below {f.break_even_cells:.0f} cells)"
                         for name, f in fits.items())
        batch = min(f.cells_within(CALL_BUDGET_S) for f in fits.values())
        text += (f"; calls stay within {CALL_BUDGET_S:g} s up to {batch} cells "
                 "(program-and-verify: max_batch_cells = \"auto\" measures and uses this)")
        return CheckResult("timing", "per-call cost against batch size", "info", text,
                           "batches larger than the break-even size use the chip well")


def parse_cells(text: str, n_cells: int) -> npt.NDArray[np.uint32]:
    """``START:STOP`` (flat indices, STOP excluded) as cells."""
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit():
        raise ConfigError(f"--cells {text!r}: expected START:STOP, e.g. 0:1024")
    a, b = int(start), int(stop)
    if not 0 <= a < b <= n_cells:
        raise ConfigError(f"--cells {text}: need 0 <= START < STOP <= {n_cells} (the chip's "
                          "cells)")
    return np.arange(a, b, dtype=np.uint32)


def check_chip(driver: CrossbarDriver, cells: npt.ArrayLike, *, resource: str | None = None,
               wire: bool = True, config: CheckConfig | None = None) -> list[CheckResult]:
    """Every check: through ``driver``, then (``wire``, and ``resource`` an SCPI chip) on
    the wire, with the driver closed. The driver is closed when this returns."""
    from drivers.plugins import resolve

    suite = ConformanceSuite(driver, cells, config)
    info = driver.info
    dialect = getattr(driver, "dialect", None)  # an SCPI driver's words
    try:
        results = suite.run()
    finally:
        driver.close()
    kind = resolve(resource).name if resource else None
    if not wire:
        return _every_rule(results, DRIVER_RULES)
    if kind in WIRE_RULES:
        wire_out: list[CheckResult] = []
        try:
            if kind == "visa":  # SCPI over VISA
                scpi_wire_checks(str(resource), info, suite.cells, config, dialect, wire_out)
            else:  # framed binary on a serial port
                port = str(resource).removeprefix("serial:")
                serial_wire_checks(port, info, suite.cells, config, wire_out)
        except Exception as exc:  # the rule that raised fails; the ones after it too
            done = {r.rule for r in wire_out}
            left = [r for r in WIRE_RULES[kind] if r not in done]
            wire_out += [raised(left[0], exc)] + [CheckResult(
                r, RULES[r], "fail", f"not checked: the wire checks stopped at {left[0]} "
                f"({type(exc).__name__}: {exc})", "a wire rule that cannot be checked is "
                "not passed") for r in left[1:]]
        results += wire_out
        return _every_rule(results, DRIVER_RULES + WIRE_RULES[kind])
    why = ("the in-process mock has no wire" if kind in (None, "mock")
           else "wire checks are for the built-in SCPI and serial protocols; this driver "
           "is checked through its API")
    results.append(CheckResult("wire", RULES["wire"], "skip", why,
                               "run the driver-level checks above"))
    return _every_rule(results, DRIVER_RULES)


def _every_rule(results: list[CheckResult], rules: tuple[str, ...]) -> list[CheckResult]:
    """``results`` with a failure for every rule of ``rules`` that has none (a rule
    nobody checked is never passed, nor skipped)."""
    have = {r.rule for r in results}
    return results + [CheckResult(r, RULES[r], "fail", "no result: the check did not run",
                                  "a rule that was not checked is not passed")
                      for r in rules if r not in have]
