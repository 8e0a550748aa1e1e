"""Accuracy (or any metric) of a network whose weights live on PCM: ideal, simulated and
measured modes.

The network is any ``torch.nn.Module``, converted by ``pcmlab.analog.convert_to_analog``:
its weight layers run the analog forward (DAC, MAC with the crossbar weight, ADC, drift
compensation, digital bias), everything else runs as the model's own forward says. The
modes differ only in the crossbar weight each analog layer gets: the float weight (ideal),
weights from conductances drawn from the statistical PCM model (simulated), or weights
from conductances read on a chip (measured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pcmlab.analog import (
    AnalogNetwork,
    LayerRanges,
    Periphery,
    convert_to_analog,
    fingerprint,
    quantize,
)
from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError
from pcmlab.mapping import NetworkMapping, weight_from_matrices
from pcmlab.pcm_model import PCMModel, global_drift_compensation

log = logging.getLogger(__name__)

__all__ = ["AnalogEvaluator", "LayerRanges", "NoiseSwitches", "Periphery",
           "SimulatedAccuracy", "accuracy_metric", "quantize"]

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]
Data = torch.Tensor | Iterable
GdcEstimator = Literal["device_sum", "column_sum"]


class NoiseSwitches(StrictModel):
    """Which effects the simulated mode includes."""

    programming: bool = True
    drift: bool = True
    read: bool = True
    drift_compensation: bool = True


@dataclass(frozen=True)
class SimulatedAccuracy:
    time_s: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.float64]  # runs x times (the metric's value)

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        return self.accuracy.mean(axis=0)

    @property
    def std(self) -> npt.NDArray[np.float64]:
        return self.accuracy.std(axis=0)


def accuracy_metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose largest output is the label (the default metric)."""
    return (output.argmax(dim=1) == target).float().mean()


def drift_compensation(reference: Sequence[npt.NDArray[np.float64]],
                       now: Sequence[npt.NDArray[np.float64]],
                       estimator: GdcEstimator = "device_sum") -> list[float]:
    """alpha per layer from the layer's devices at the reference time (t0) and now.

    ``reference`` and ``now`` are per layer the (G+, G-) device conductances as an array
    of shape (2, ...) ("device_sum": the response of an all-ones input on every device,
    the sum of all column currents) or the signed weight matrices (in, out)
    ("column_sum": summed |column response| to an all-ones input)."""
    if estimator == "device_sum":
        return [global_drift_compensation(ref.sum(), cur.sum())
                for ref, cur in zip(reference, now, strict=True)]
    return [global_drift_compensation(ref.reshape(-1, ref.shape[-1]).sum(axis=0),
                                      cur.reshape(-1, cur.shape[-1]).sum(axis=0))
            for ref, cur in zip(reference, now, strict=True)]


class AnalogEvaluator:
    """Evaluates any network with its weight layers on the crossbar (float weights, or
    weights from conductances). ``x_calibration``: inputs (a tensor, or a DataLoader of
    (inputs, labels) batches) on which the DAC/ADC ranges are calibrated."""

    def __init__(self, model: nn.Module, x_calibration: Data,
                 periphery: Periphery | None = None, *,
                 ranges: LayerRanges | None = None, keep_digital: Iterable[str] = (),
                 device: str | torch.device = "cpu", batch_size: int = 4096,
                 gdc_estimator: GdcEstimator = "device_sum") -> None:
        self.periphery = periphery or Periphery()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.gdc_estimator: GdcEstimator = gdc_estimator
        self.fingerprint = fingerprint(model)
        example = next(iter(self._batches(x_calibration, None, 64)))[0].cpu()
        self.network: AnalogNetwork = convert_to_analog(
            model, self.periphery, keep_digital=keep_digital, example=example)
        self.network.to(self.device).eval()
        self.model = self.network
        self.report = self.network.report
        self.weights = [m.weight.detach().clone() for m in self.network.matrices]
        self.ranges = ranges if ranges is not None else self.calibrate(x_calibration)
        self._apply_ranges(self.ranges)

    # -- data ------------------------------------------------------------------------------
    def _batches(self, x: Data, y: torch.Tensor | None, batch: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(inputs, labels) batches on the evaluator's device, from tensors or a loader."""
        if isinstance(x, torch.Tensor):
            n = batch or self.batch_size
            for i in range(0, x.shape[0], n):
                yield (x[i:i + n].to(self.device),
                       None if y is None else y[i:i + n].to(self.device))
            return
        got = False
        for item in x:
            got = True
            xb, yb = (item[0], item[1]) if isinstance(item, tuple | list) else (item, None)
            yield (torch.as_tensor(xb, dtype=torch.float32).to(self.device),
                   None if yb is None else torch.as_tensor(yb).to(self.device))
        if not got:
            raise ConfigError("the data loader yielded no batches")

    # -- structure -------------------------------------------------------------------------
    def layer_specs(self) -> list[tuple[int, str, str, tuple[int, ...], float, int]]:
        """(index, name, kind, weight shape, W_max, groups) of each analog matrix."""
        return [(k, name, m.kind, tuple(m.weight.shape), float(w.abs().max()), m.groups)
                for k, ((name, m), w) in enumerate(zip(self.network.layers, self.weights,
                                                       strict=True))]

    def mapping(self, rows: int, cols: int, g_max_us: float = 25.0, *,
                tiling: bool = True) -> NetworkMapping:
        return NetworkMapping.place(self.layer_specs(), rows, cols, g_max_us, tiling=tiling,
                                    fingerprint=self.fingerprint)

    def check_mapping(self, mapping: NetworkMapping) -> None:
        """Refuse a mapping (from a file) that was not made for this model."""
        if mapping.fingerprint and mapping.fingerprint != self.fingerprint:
            raise ConfigError(
                f"the model does not match the measurement file's network: the file was "
                f"deployed with network {mapping.fingerprint}, this model is "
                f"{self.fingerprint} (architecture or weights differ); evaluate with the "
                "model that was deployed")
        mine = [(k, kind, shape) for k, _, kind, shape, _, _ in self.layer_specs()]
        theirs = [(lm.index, lm.kind, tuple(lm.weight_shape)) for lm in mapping.layers]
        if mine != theirs:
            raise ConfigError("the model does not match the measurement file's network: file "
                              f"has layers {theirs}, model has {mine}")

    # -- ranges ----------------------------------------------------------------------------
    def _apply_ranges(self, ranges: LayerRanges) -> None:
        mats = self.network.matrices
        if not len(ranges.input_lo) == len(ranges.input_hi) == len(ranges.output) == len(mats):
            raise ConfigError(f"ranges for {len(ranges.output)} layers, the network has "
                              f"{len(mats)} analog matrices")
        for k, m in enumerate(mats):
            m.set_ranges(ranges.input_lo[k], ranges.input_hi[k], ranges.output[k])
        with torch.no_grad():
            self.network.log_gain.fill_(float(np.log(self.periphery.adc_gain)))

    @torch.no_grad()
    def calibrate(self, x: Data) -> LayerRanges:
        """DAC and ADC ranges per layer from the float network on calibration inputs."""
        net, st = self.network, self.network.state
        net.set_programmed(None)
        for m in net.matrices:
            m.recorded = {"x": [], "y": []}
            m.x_min = float("inf")
        st.recording, st.quantized = True, False
        try:
            for xb, _ in self._batches(x, None):
                net(xb)
        finally:
            st.recording, st.quantized = False, True
        q = self.periphery.range_percentile / 100
        lo, hi, out = [], [], []
        for m in net.matrices:
            if not m.recorded["x"]:
                raise ConfigError(f"analog layer {m.kind} was not used by the model's "
                                  "forward on the calibration inputs")
            xin, y = torch.cat(m.recorded["x"]), torch.cat(m.recorded["y"])
            m.recorded = {"x": [], "y": []}
            if m.x_min >= 0:
                lo.append(0.0)
                hi.append(float(torch.quantile(xin, q)))
            else:
                r = float(torch.quantile(xin.abs(), q))
                lo.append(-r)
                hi.append(r)
            out.append(float(torch.quantile(y.abs(), q)))
        return LayerRanges(tuple(lo), tuple(hi), tuple(out))

    # -- forward ---------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None,
               gdc: Sequence[float] | None = None, *, quantized: bool = True) -> torch.Tensor:
        net = self.network
        net.set_programmed(weights, gdc)
        net.state.quantized = quantized
        try:
            return net(x.to(self.device))
        finally:
            net.state.quantized = True
            net.set_programmed(None)

    @torch.no_grad()
    def evaluate(self, x: Data, y: torch.Tensor | None = None,
                 weights: Sequence[torch.Tensor] | None = None,
                 gdc: Sequence[float] | None = None, *, quantized: bool = True,
                 metric: Metric | None = None) -> float:
        """The metric (default: accuracy) over the data, averaged over samples; ``x`` a
        tensor with labels ``y`` or a DataLoader of (inputs, labels), streamed in batches."""
        metric = metric or accuracy_metric
        net = self.network
        net.set_programmed(weights, gdc)
        net.state.quantized = quantized
        total, n = 0.0, 0
        try:
            for xb, yb in self._batches(x, y):
                if yb is None:
                    raise ConfigError("labels are missing: give y, or a loader of "
                                      "(inputs, labels)")
                value = metric(net(xb), yb)
                total += float(value) * xb.shape[0]
                n += xb.shape[0]
        finally:
            net.state.quantized = True
            net.set_programmed(None)
        return total / max(n, 1)

    def accuracy(self, x: Data, y: torch.Tensor | None = None,
                 weights: Sequence[torch.Tensor] | None = None,
                 gdc: Sequence[float] | None = None, *, quantized: bool = True,
                 metric: Metric | None = None) -> float:
        return self.evaluate(x, y, weights, gdc, quantized=quantized, metric=metric)

    def ideal_accuracy(self, x: Data, y: torch.Tensor | None = None, *,
                       metric: Metric | None = None) -> float:
        """The float model: ideal weights, no quantization."""
        return self.evaluate(x, y, quantized=False, metric=metric)

    # -- conductances to weights -----------------------------------------------------------
    def device_targets(self, mapping: NetworkMapping
                       ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32],
                                  npt.NDArray[np.int16]]:
        return mapping.targets([w.cpu().numpy() for w in self.weights])

    def weights_from_devices(self, mapping: NetworkMapping, g_us: npt.ArrayLike
                             ) -> tuple[list[torch.Tensor], list[npt.NDArray[np.float64]]]:
        """Weights (torch, layer shapes) and (groups, in, out) crossbar matrices from a
        vector of device conductances in ``mapping.targets`` order."""
        matrices = mapping.device_matrices(g_us)
        weights = [torch.from_numpy(weight_from_matrices(mat, lm.weight_shape)
                                    .astype(np.float32)).to(self.device)
                   for lm, mat in zip(mapping.layers, matrices, strict=True)]
        return weights, matrices

    def _gdc_inputs(self, mapping: NetworkMapping, g_us: npt.NDArray[np.float64],
                    matrices: list[npt.NDArray[np.float64]]) -> list[npt.NDArray[np.float64]]:
        if self.gdc_estimator == "column_sum":
            return matrices
        out, off = [], 0
        for lm in mapping.layers:
            out.append(g_us[off:off + lm.n_cells])
            off += lm.n_cells
        return out

    # -- modes -----------------------------------------------------------------------------
    def simulate(self, x: Data, y: torch.Tensor | None, mapping: NetworkMapping,
                 times_s: npt.ArrayLike, n_runs: int, rng: np.random.Generator, *,
                 pcm: PCMModel | None = None, noise: NoiseSwitches | None = None,
                 metric: Metric | None = None) -> SimulatedAccuracy:
        """Monte Carlo over the statistical PCM model: per run one programming and one set
        of drift exponents, independent read noise at every time. Drift compensation is
        referenced to the programmed state read at t0 (the model's, 20 s)."""
        if n_runs < 1:
            raise ConfigError(f"n_runs = {n_runs}: need at least one run")
        pcm = pcm or PCMModel()
        noise = noise or NoiseSwitches()
        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        t0 = pcm.calibration.t0_s
        _, g_t, _ = self.device_targets(mapping)
        g_t = g_t.astype(np.float64)
        acc = np.empty((n_runs, times.size))

        def read(g_prog, nu, t):
            g = pcm.drift(g_prog, nu, t) if noise.drift else g_prog.copy()
            if noise.read:
                sigma = pcm.read_noise_sigma_us(g, g_t, t)
                g = np.maximum(g + sigma * rng.standard_normal(g.shape), 0.0)
            return g

        for run in range(n_runs):
            g_prog = pcm.program(g_t, rng) if noise.programming else g_t
            nu = pcm.sample_nu(g_t, rng) if noise.drift else np.zeros_like(g_t)
            reference = None
            if noise.drift_compensation:
                g_ref = read(g_prog, nu, t0)
                reference = self._gdc_inputs(mapping, g_ref, mapping.device_matrices(g_ref))
            for j, t in enumerate(times):
                g = read(g_prog, nu, t)
                weights, mats = self.weights_from_devices(mapping, g)
                gdc = (drift_compensation(reference, self._gdc_inputs(mapping, g, mats),
                                          self.gdc_estimator)
                       if reference is not None else None)
                acc[run, j] = self.evaluate(x, y, weights, gdc, metric=metric)
        return SimulatedAccuracy(times, acc)

    def measured(self, x: Data, y: torch.Tensor | None, mapping: NetworkMapping,
                 g_rows_us: npt.ArrayLike, *, drift_compensation: bool = True,
                 time_s: npt.ArrayLike | None = None, t0_s: float = 20.0,
                 metric: Metric | None = None) -> npt.NDArray[np.float64]:
        """One metric value per readout row (conductances in ``mapping.targets`` order).
        Drift compensation is referenced to the readout nearest t0 when ``time_s`` (s since
        programming, one per row) is given, else to the first row."""
        rows = np.asarray(g_rows_us, dtype=np.float64)
        out = np.empty(rows.shape[0])
        ref_row = 0 if time_s is None else int(np.argmin(np.abs(np.asarray(time_s) - t0_s)))
        reference = None
        if drift_compensation and rows.shape[0]:
            g_ref = rows[ref_row]
            reference = self._gdc_inputs(mapping, g_ref, mapping.device_matrices(g_ref))
        for i, row in enumerate(rows):
            weights, mats = self.weights_from_devices(mapping, row)
            gdc = (_drift_comp(reference, self._gdc_inputs(mapping, row, mats),
                               self.gdc_estimator) if reference is not None else None)
            out[i] = self.evaluate(x, y, weights, gdc, metric=metric)
        return out

    @staticmethod
    def drift_compensation(reference: list[npt.NDArray[np.float64]],
                           now: list[npt.NDArray[np.float64]]) -> list[float]:
        """alpha per layer, "column_sum" estimator on signed matrices (see the module
        function ``drift_compensation``)."""
        return drift_compensation(reference, now, "column_sum")


_drift_comp = drift_compensation
