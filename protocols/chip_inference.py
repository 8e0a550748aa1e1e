"""Inference through the chip (chip mode) and chip-in-the-loop calibration.

Chip mode runs a network with every analog layer's matrix-vector products computed by the
chip's in-array MVM (``pcmlab.analog.chip``); the rest of the network is digital. Three
ways to correct what drift and the periphery do to the chip's outputs, none of which
re-programs a device:

- ``drift_reference`` / ``drift_factors``: global drift compensation, one factor per
  layer, from the chip's summed response of every device of the layer (a single-ended
  MVM with full-scale inputs), at t0 and now.
- ``calibrate``: per-output scale and offset of every analog layer (the ADC gain and
  offset, and what bias and normalization would absorb), fitted on the chip's own outputs
  for a calibration batch, layer after layer in the network's order: each layer's inputs
  come through the chip and the already-calibrated layers before it, and its outputs are
  matched, by least squares, to what the programmed weights would give on those same
  inputs. No labels are used. It applies after the drift compensation (fitted on the
  compensated outputs), so a calibration fitted once after programming keeps working as
  the drift factors follow the drift; fitted again later it also follows what global
  compensation cannot (per-column drift, ADC mismatch at the new signal levels).
- ``refine``: physics-aware training of that calibration on labelled data: forward
  through the chip, backward through the digital model (the programmed weights, straight
  through). On the mock it adds nothing measurable to the least-squares fit (below), so
  the deployment protocol does not run it; it is there for chips where layer-wise
  matching is not enough.
- none: the chip's outputs as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from drivers.base import CrossbarDriver
from pcmlab.analog.chip import ChipBackend, ChipCalibration
from pcmlab.errors import CapabilityError, ConfigError
from pcmlab.evaluator import AnalogEvaluator, Metric
from pcmlab.mapping import NetworkMapping
from pcmlab.mvm import MvmSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverMvm:
    """A driver's MVM as chip mode takes it (``pcmlab.analog.chip.MvmChip``)."""

    driver: CrossbarDriver
    periphery: MvmSpec

    def mvm(self, region: tuple[int, int, int, int], inputs: npt.NDArray[np.int16], *,
            full_scale: float, differential: bool = True) -> npt.NDArray[np.int16]:
        return self.driver.mvm(region, inputs, full_scale=full_scale,
                               differential=differential)


def mvm_chip(driver: CrossbarDriver) -> DriverMvm:
    """The driver's MVM and periphery for chip mode; CapabilityError on a chip without."""
    spec = driver.info.mvm
    if spec is None:
        raise CapabilityError(f"{driver.info.identity} has no MVM capability: chip mode "
                              "needs a chip that computes matrix-vector products")
    return DriverMvm(driver, spec)


@contextmanager
def chip_mode(evaluator: AnalogEvaluator, backend: ChipBackend) -> Iterator[ChipBackend]:
    """The evaluator's network with its MACs on the chip, for the ``with`` block."""
    state = evaluator.network.state
    state.chip = backend
    try:
        yield backend
    finally:
        state.chip = None


def chip_accuracy(evaluator: AnalogEvaluator, driver: CrossbarDriver, mapping: NetworkMapping,
                  x: torch.Tensor, y: torch.Tensor, *,
                  calibration: ChipCalibration | None = None,
                  drift: dict[int, float] | None = None, metric: Metric | None = None
                  ) -> float:
    """The metric of the network run through the chip: each analog layer's outputs times
    its ``drift`` factor, then its ``calibration`` affine correction, if given."""
    backend = ChipBackend(mvm_chip(driver), mapping, evaluator.network)
    backend.calibration = calibration
    backend.gdc = dict(drift or {})
    with chip_mode(evaluator, backend):
        return evaluator.evaluate(x, y, metric=metric)


def drift_reference(driver: CrossbarDriver, mapping: NetworkMapping) -> dict[int, float]:
    """Per layer: the chip's summed response of all its devices (G+ and G-) to full-scale
    inputs, in units of devices at G_max (single-ended MVM on every tile)."""
    spec = driver.info.mvm
    if spec is None:
        raise ConfigError(f"{driver.info.identity} has no MVM capability")
    out: dict[int, float] = {}
    for lm in mapping.layers:
        total = 0.0
        for t in lm.tiles:
            region = (t.array * mapping.rows + t.row0, t.col0, t.n_in, 2 * t.n_out)
            x = np.full((1, t.n_in), spec.dac_max, dtype=np.int16)
            fs = float(t.n_in)  # every device at G_max would reach full scale
            codes = driver.mvm(region, x, full_scale=fs, differential=False)
            total += float(codes.astype(np.float64).sum()) * fs / spec.adc_max
        out[lm.index] = total
    return out


def drift_factors(reference: dict[int, float], now: dict[int, float]) -> dict[int, float]:
    """Global drift compensation per layer: response at t0 / response now."""
    return {k: (reference[k] / now[k] if now.get(k, 0) > 0 else 1.0) for k in reference}


def calibrate(evaluator: AnalogEvaluator, driver: CrossbarDriver, mapping: NetworkMapping,
              x_calibration: torch.Tensor, *, drift: dict[int, float] | None = None
              ) -> ChipCalibration:
    """Per-output scale and offset of every analog layer, on the chip's outputs for
    ``x_calibration`` (see the module docstring). Layers not yet calibrated during a pass
    use ``drift`` factors if given."""
    cal = ChipCalibration()
    backend = ChipBackend(mvm_chip(driver), mapping, evaluator.network)
    backend.calibration = cal
    backend.gdc = dict(drift or {})
    with chip_mode(evaluator, backend), torch.no_grad():
        evaluator.network.eval()
        for lm in mapping.layers:
            backend.capture, backend.captured = lm.index, []
            for xb, _ in evaluator._batches(x_calibration, None):
                evaluator.network(xb)
            if not backend.captured:
                raise ConfigError(f"layer {lm.name} saw no input during calibration")
            chip = torch.cat([c for c, _ in backend.captured]).double()
            ideal = torch.cat([i for _, i in backend.captured]).double()
            scale, offset = _fit_affine(chip, ideal)
            cal.scale[lm.index] = scale.float()
            cal.offset[lm.index] = offset.float()
            log.info("calibrated %s: scale %.3f..%.3f, offset %.3g..%.3g", lm.name,
                     float(scale.min()), float(scale.max()), float(offset.min()),
                     float(offset.max()))
        backend.capture = None
    return cal


def refine(evaluator: AnalogEvaluator, driver: CrossbarDriver, mapping: NetworkMapping,
           calibration: ChipCalibration, x: torch.Tensor, y: torch.Tensor, *,
           drift: dict[int, float] | None = None, steps: int = 30, lr: float = 0.01,
           batch: int = 128) -> ChipCalibration:
    """Physics-aware training of the calibration (Wright et al., Nature 601, 549, 2022):
    the per-output scales and offsets, from ``calibration``, trained on labelled data
    ``x, y`` by cross entropy with the forward through the chip and the backward through
    the digital model (the programmed weights, straight through). Nothing on the chip is
    re-programmed; the network's own parameters are left as they are."""
    out = ChipCalibration({k: v.clone().requires_grad_(True)
                           for k, v in calibration.scale.items()},
                          {k: v.clone().requires_grad_(True)
                           for k, v in calibration.offset.items()})
    params = [*out.scale.values(), *out.offset.values()]
    opt = torch.optim.Adam(params, lr=lr)
    backend = ChipBackend(mvm_chip(driver), mapping, evaluator.network)
    backend.calibration, backend.gdc = out, dict(drift or {})
    backend.physics_aware = True
    gen = torch.Generator().manual_seed(0)
    net = evaluator.network
    frozen = [p for p in net.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with chip_mode(evaluator, backend):
            net.eval()
            for _ in range(steps):
                idx = torch.randperm(x.shape[0], generator=gen)[:batch]
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return ChipCalibration({k: v.detach() for k, v in out.scale.items()},
                           {k: v.detach() for k, v in out.offset.items()})


def _fit_affine(chip: torch.Tensor, ideal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ideal ~ scale * chip + offset, per column (samples x columns)."""
    mc, mi = chip.mean(0), ideal.mean(0)
    dc, di = chip - mc, ideal - mi
    var = (dc * dc).mean(0)
    cov = (dc * di).mean(0)
    flat = var <= 1e-12 * (mc.abs() + 1) ** 2  # a column the chip never moved: offset only
    scale = torch.where(flat, torch.ones_like(var), cov / torch.where(flat, 1.0, var))
    return scale, mi - scale * mc


CHIP_COLUMNS = ("time_s", "uncorrected", "drift_compensated", "calibrated_once",
                "recalibrated")


@dataclass(frozen=True)
class ChipModeAccuracy:
    """Accuracy through the chip at one time, four ways."""

    time_s: float  # s after programming when its passes began (after its readout's)
    uncorrected: float
    drift_compensated: float
    calibrated_once: float  # drift compensation + the calibration fitted after programming
    recalibrated: float  # drift compensation + a calibration fitted again at this time


class ChipInTheLoop:
    """Chip-mode accuracy over time, for a deployment's readout schedule: call ``at`` at
    each time (the first call is the reference: drift compensation and the calibration
    fitted after programming)."""

    def __init__(self, evaluator: AnalogEvaluator, driver: CrossbarDriver,
                 mapping: NetworkMapping, x_test: torch.Tensor, y_test: torch.Tensor,
                 x_calibration: torch.Tensor) -> None:
        if driver.info.mvm is None:
            raise ConfigError(f"{driver.info.identity} has no MVM capability: chip-in-the-"
                              "loop needs a chip that computes matrix-vector products")
        self.evaluator, self.driver, self.mapping = evaluator, driver, mapping
        self.x_test, self.y_test, self.x_cal = x_test, y_test, x_calibration
        self.reference: dict[int, float] | None = None
        self.first: ChipCalibration | None = None
        self.results: list[ChipModeAccuracy] = []

    def at(self, time_s: float) -> ChipModeAccuracy:
        """Chip mode now, ``time_s`` after programming (a readout's time). The row's time
        is when its test-set passes began on the chip's clock: after the drift reference
        and the calibration, which take chip time (seconds on a large network)."""
        ev, d, m = self.evaluator, self.driver, self.mapping
        called_s = d.clock.now()
        sums = drift_reference(d, m)
        if self.reference is None:
            self.reference = sums
        factors = drift_factors(self.reference, sums)
        now = calibrate(ev, d, m, self.x_cal, drift=factors)
        if self.first is None:
            self.first = now
        x, y = self.x_test, self.y_test
        began_s = float(time_s) + (d.clock.now() - called_s)
        row = ChipModeAccuracy(
            began_s, chip_accuracy(ev, d, m, x, y),
            chip_accuracy(ev, d, m, x, y, drift=factors),
            chip_accuracy(ev, d, m, x, y, drift=factors, calibration=self.first),
            chip_accuracy(ev, d, m, x, y, drift=factors, calibration=now))
        log.info("chip mode at %.0f s: %.4f uncorrected, %.4f drift-compensated, %.4f "
                 "calibrated once, %.4f recalibrated", time_s, row.uncorrected,
                 row.drift_compensated, row.calibrated_once, row.recalibrated)
        self.results.append(row)
        return row
