"""Accuracy of a network whose weights live on PCM: ideal, simulated and measured modes.

The forward pass models the periphery: inputs quantized by a DAC (per-layer range),
the analog MAC, outputs quantized by an ADC (per-layer range, one gain for all layers),
global drift compensation as one digital factor per layer, then the digital bias.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError
from pcmlab.mapping import NetworkMapping
from pcmlab.nn_model import analog_layers, fold_batchnorm
from pcmlab.pcm_model import PCMModel, global_drift_compensation

log = logging.getLogger(__name__)


class Periphery(StrictModel):
    """DAC and ADC of the crossbar (None: not quantized)."""

    dac_bits: int | None = Field(8, ge=1, le=24)
    adc_bits: int | None = Field(8, ge=1, le=24)
    adc_gain: float = Field(1.0, gt=0, description="one ADC gain shared by all layers")
    range_percentile: float = Field(99.99, gt=50, le=100,
                                    description="calibrated ranges cover this share")


class NoiseSwitches(StrictModel):
    """Which effects the simulated mode includes."""

    programming: bool = True
    drift: bool = True
    read: bool = True
    drift_compensation: bool = True


@dataclass(frozen=True)
class LayerRanges:
    """Per analog layer: DAC input range [lo, hi] and ADC output range [-out, out]."""

    input_lo: tuple[float, ...]
    input_hi: tuple[float, ...]
    output: tuple[float, ...]


@dataclass(frozen=True)
class SimulatedAccuracy:
    time_s: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.float64]  # runs x times

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        return self.accuracy.mean(axis=0)

    @property
    def std(self) -> npt.NDArray[np.float64]:
        return self.accuracy.std(axis=0)


def quantize(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Uniform quantizer with a level at zero: unsigned over [0, hi] when lo >= 0, else
    symmetric over [-max(|lo|, hi), +max(|lo|, hi)]. Values beyond the range saturate."""
    if lo >= 0:
        qmax = 2**bits - 1
        qmin = 0
        step = hi / qmax if hi > 0 else 1.0
    else:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
        m = max(-lo, hi)
        step = m / qmax if m > 0 else 1.0
    q = x / step  # one new tensor; the rest in place
    return q.round_().clamp_(qmin, qmax).mul_(step)


class AnalogEvaluator:
    """Evaluates a classifier with weights from conductances (or ideal float weights)."""

    def __init__(self, model: nn.Sequential, x_calibration: torch.Tensor,
                 periphery: Periphery | None = None, *,
                 ranges: LayerRanges | None = None) -> None:
        self.model = fold_batchnorm(model)
        self.periphery = periphery or Periphery()
        self._analog = analog_layers(self.model)
        if not self._analog:
            raise ConfigError("the model has no Linear or Conv2d layer to put on the chip")
        self._slot = {pos: k for k, (pos, _) in enumerate(self._analog)}
        self.weights = [m.weight.detach().clone() for _, m in self._analog]
        self.ranges = ranges or self.calibrate(x_calibration)

    # -- structure -------------------------------------------------------------------------
    def layer_specs(self) -> list[tuple[int, str, str, tuple[int, ...], float]]:
        """(position, name, kind, weight shape, W_max) of each analog layer."""
        return [(pos, f"layer{pos}", type(m).__name__, tuple(m.weight.shape),
                 float(m.weight.detach().abs().max()))
                for pos, m in self._analog]

    def mapping(self, rows: int, cols: int, g_max_us: float = 25.0, *,
                tiling: bool = True) -> NetworkMapping:
        return NetworkMapping.place(self.layer_specs(), rows, cols, g_max_us, tiling=tiling)

    def check_mapping(self, mapping: NetworkMapping) -> None:
        """Refuse a mapping (from a file) that was not made for this model."""
        mine = [(pos, kind, shape) for pos, _, kind, shape, _ in self.layer_specs()]
        theirs = [(lm.index, lm.kind, tuple(lm.weight_shape)) for lm in mapping.layers]
        if mine != theirs:
            raise ConfigError("the model does not match the measurement file's network: file "
                              f"has layers {theirs}, model has {mine}")

    # -- forward ---------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, weights: list[torch.Tensor] | None,
             gdc: list[float] | None, quantized: bool, record: list | None = None
             ) -> torch.Tensor:
        p = self.periphery
        for pos, layer in enumerate(self.model):
            k = self._slot.get(pos)
            if k is None:
                x = layer(x)
                continue
            w = self.weights[k] if weights is None else weights[k]
            r = self.ranges if quantized else None
            if r is not None and p.dac_bits is not None:
                x = quantize(x, r.input_lo[k], r.input_hi[k], p.dac_bits)
            if record is not None:
                record.append(x)
            if isinstance(layer, nn.Conv2d):
                y = F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation)
            else:
                y = F.linear(x, w)
            if record is not None:
                record.append(y)
            if r is not None and p.adc_bits is not None:
                out = r.output[k] / p.adc_gain
                y = quantize(y, -out, out, p.adc_bits)
            if gdc is not None:
                y = y * gdc[k]
            if layer.bias is not None:
                y = y + (layer.bias.view(1, -1, 1, 1) if y.dim() == 4 else layer.bias)
            x = y
        return x

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> LayerRanges:
        """DAC and ADC ranges per layer from the float model on calibration inputs."""
        record: list[torch.Tensor] = []
        self._run(x, None, None, quantized=False, record=record)
        q = self.periphery.range_percentile / 100
        lo, hi, out = [], [], []
        for k in range(len(self._analog)):
            xin, y = record[2 * k].flatten(), record[2 * k + 1].flatten()
            sample = xin[torch.randperm(xin.numel(), generator=torch.Generator().manual_seed(k))
                         [:1_000_000]]
            if float(xin.min()) >= 0:
                lo.append(0.0)
                hi.append(float(torch.quantile(sample, q)))
            else:
                m = float(torch.quantile(sample.abs(), q))
                lo.append(-m)
                hi.append(m)
            ys = y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(k))
                   [:1_000_000]]
            out.append(float(torch.quantile(ys.abs(), q)))
        return LayerRanges(tuple(lo), tuple(hi), tuple(out))

    @torch.no_grad()
    def logits(self, x: torch.Tensor, weights: list[torch.Tensor] | None = None,
               gdc: list[float] | None = None, *, quantized: bool = True) -> torch.Tensor:
        return self._run(x, weights, gdc, quantized)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor,
                 weights: list[torch.Tensor] | None = None, gdc: list[float] | None = None,
                 *, quantized: bool = True, batch: int = 4096) -> float:
        correct = 0
        for i in range(0, x.shape[0], batch):
            out = self._run(x[i:i + batch], weights, gdc, quantized)
            correct += int((out.argmax(dim=1) == y[i:i + batch]).sum())
        return correct / max(int(x.shape[0]), 1)

    def ideal_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The float model: ideal weights, no quantization."""
        return self.accuracy(x, y, quantized=False)

    # -- conductances to weights -----------------------------------------------------------
    def device_targets(self, mapping: NetworkMapping
                       ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32],
                                  npt.NDArray[np.int16]]:
        return mapping.targets([w.numpy() for w in self.weights])

    def weights_from_devices(self, mapping: NetworkMapping, g_us: npt.ArrayLike
                             ) -> tuple[list[torch.Tensor], list[npt.NDArray[np.float64]]]:
        """Weights (torch, layer shapes) and crossbar matrices from a vector of device
        conductances in ``mapping.targets`` order."""
        g = np.asarray(g_us, dtype=np.float64)
        weights, matrices = [], []
        off = 0
        for lm in mapping.layers:
            m = lm.in_dim * lm.out_dim
            if off + 2 * m > g.size:
                raise ConfigError(f"{g.size} conductances are too few for the network")
            mat = (g[off:off + m] - g[off + m:off + 2 * m]).reshape(lm.in_dim, lm.out_dim)
            mat *= lm.w_max / mapping.g_max_us
            matrices.append(mat)
            weights.append(torch.from_numpy(mat.T.reshape(lm.weight_shape).astype(np.float32)))
            off += 2 * m
        return weights, matrices

    @staticmethod
    def drift_compensation(reference: list[npt.NDArray[np.float64]],
                           now: list[npt.NDArray[np.float64]]) -> list[float]:
        """alpha per layer: summed |column response| to an all-ones input at the reference
        time over the same now."""
        return [global_drift_compensation(ref.sum(axis=0), cur.sum(axis=0))
                for ref, cur in zip(reference, now, strict=True)]

    # -- modes -----------------------------------------------------------------------------
    def simulate(self, x: torch.Tensor, y: torch.Tensor, mapping: NetworkMapping,
                 times_s: npt.ArrayLike, n_runs: int, rng: np.random.Generator, *,
                 pcm: PCMModel | None = None, noise: NoiseSwitches | None = None
                 ) -> SimulatedAccuracy:
        """Monte Carlo over the statistical PCM model: per run one programming and one set
        of drift exponents, independent read noise at every time. Drift compensation is
        referenced to the first time point."""
        if n_runs < 1:
            raise ConfigError(f"n_runs = {n_runs}: need at least one run")
        pcm = pcm or PCMModel()
        noise = noise or NoiseSwitches()
        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        _, g_t, _ = self.device_targets(mapping)
        g_t = g_t.astype(np.float64)
        acc = np.empty((n_runs, times.size))
        for run in range(n_runs):
            g_prog = pcm.program(g_t, rng) if noise.programming else g_t
            nu = pcm.sample_nu(g_t, rng) if noise.drift else np.zeros_like(g_t)
            reference = None
            for j, t in enumerate(times):
                g = pcm.drift(g_prog, nu, t) if noise.drift else g_prog.copy()
                if noise.read:
                    sigma = pcm.read_noise_sigma_us(g, g_t, t)
                    g = np.maximum(g + sigma * rng.standard_normal(g.shape), 0.0)
                weights, mats = self.weights_from_devices(mapping, g)
                if reference is None:
                    reference = mats
                gdc = (self.drift_compensation(reference, mats)
                       if noise.drift_compensation else None)
                acc[run, j] = self.accuracy(x, y, weights, gdc)
        return SimulatedAccuracy(times, acc)

    def measured(self, x: torch.Tensor, y: torch.Tensor, mapping: NetworkMapping,
                 g_rows_us: npt.ArrayLike, *, drift_compensation: bool = True
                 ) -> npt.NDArray[np.float64]:
        """One accuracy per readout row (conductances in ``mapping.targets`` order);
        drift compensation referenced to the first row."""
        rows = np.asarray(g_rows_us)
        out = np.empty(rows.shape[0])
        reference = None
        for i, row in enumerate(rows):
            weights, mats = self.weights_from_devices(mapping, row)
            if reference is None:
                reference = mats
            gdc = self.drift_compensation(reference, mats) if drift_compensation else None
            out[i] = self.accuracy(x, y, weights, gdc)
        return out
