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
from pydantic import Field
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
from pcmlab.mapping import NetworkMapping
from pcmlab.pcm_model import (
    OK,
    STUCK_RESET,
    STUCK_SET,
    WEAK,
    PCMModel,
    global_drift_compensation,
)

log = logging.getLogger(__name__)

__all__ = ["AnalogEvaluator", "LayerRanges", "NoiseSwitches", "Periphery",
           "SimulatedAccuracy", "accuracy_metric", "quantize"]

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]
Data = torch.Tensor | Iterable
GdcEstimator = Literal["device_sum", "column_sum"]


class NoiseSwitches(StrictModel):
    """Which effects the simulated mode includes."""

    programming: bool = Field(True, description="programming noise (sigma_prog)")
    drift: bool = Field(True, description="conductance drift (t/t0)^-nu")
    read: bool = Field(True, description="1/f read noise")
    drift_compensation: bool = Field(True, description="global drift compensation per "
                                     "layer")
    faults: bool = Field(True, description="the calibration's faulty devices (stuck-RESET, "
                         "stuck-SET, weak), with the pair compensation a deployment does")

    def describe(self, pcm: PCMModel) -> str:
        """What a simulation with these switches includes, in words (for tables)."""
        c = pcm.calibration
        parts = [name for on, name in ((self.programming, "programming noise"),
                                       (self.drift, "drift"), (self.read, "1/f read noise"),
                                       (self.drift_compensation, "drift compensation"))
                 if on]
        if self.faults and c.fault_rate > 0:
            parts.append(f"faulty devices ({100 * c.stuck_reset_rate:.2f} % stuck-RESET, "
                         f"{100 * c.stuck_set_rate:.2f} % stuck-SET, "
                         f"{100 * c.weak_rate:.2f} % weak)")
        else:
            parts.append("no faulty devices")
        return ", ".join(parts)


@dataclass(frozen=True)
class SimulatedAccuracy:
    time_s: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.float64]  # runs x times (the metric's value)
    includes: str = ""  # what the simulation included, in words (NoiseSwitches.describe)

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        return self.accuracy.mean(axis=0)

    @property
    def std(self) -> npt.NDArray[np.float64]:
        """Sample standard deviation over the runs (ddof 1: the runs are a sample of
        chips, and this is the spread shown as "± std"); NaN with a single run."""
        return sample_std(self.accuracy)


def sample_std(runs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per column (time) the sample standard deviation (ddof 1) over the rows (runs);
    NaN where there is a single run (a spread of one chip is unknown)."""
    a = np.atleast_2d(np.asarray(runs, dtype=np.float64))
    if a.shape[0] < 2:
        return np.full(a.shape[1], np.nan)
    return a.std(axis=0, ddof=1)


def accuracy_metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose largest output is the label (the default metric)."""
    return (output.argmax(dim=1) == target).float().mean()


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
                tiling: bool = True, arrays: int = 1) -> NetworkMapping:
        """Place the network on up to ``arrays`` arrays of rows x cols."""
        return NetworkMapping.place(self.layer_specs(), rows, cols, g_max_us, tiling=tiling,
                                    fingerprint=self.fingerprint, arrays=arrays)

    def check_mapping(self, mapping: NetworkMapping) -> None:
        """Refuse a mapping (from a file) that was not made for this model."""
        if mapping.fingerprint and mapping.fingerprint != self.fingerprint:
            raise ConfigError(
                f"the model does not match the measurement file's network: the file was "
                f"deployed with network {mapping.fingerprint}, this model is "
                f"{self.fingerprint} (architecture, layer settings or weights differ); "
                "evaluate with the model that was deployed")
        mine = [(k, kind, shape) for k, _, kind, shape, _, _ in self.layer_specs()]
        theirs = [(lm.index, lm.kind, tuple(lm.weight_shape)) for lm in mapping.layers]
        if mine != theirs:
            raise ConfigError("the model does not match the measurement file's network: file "
                              f"has layers {theirs}, model has {mine}")

    # -- ranges ----------------------------------------------------------------------------
    def use_ranges(self, ranges: LayerRanges) -> None:
        """Use these DAC/ADC ranges from now on (e.g. ranges learned elsewhere)."""
        self._apply_ranges(ranges)
        self.ranges = ranges

    def _apply_ranges(self, ranges: LayerRanges) -> None:
        layers = self.network.layers
        if ranges.names is not None:
            where = {n: k for k, n in enumerate(ranges.names)}
            missing = [n for n, _ in layers if n not in where]
            if missing:
                raise ConfigError(
                    f"no trained DAC/ADC range for {', '.join(missing)} (the model was trained "
                    "with other layers on the chip); keep the same layers digital as in "
                    "training, or calibrate new ranges (--bits N)")
            index = [where[n] for n, _ in layers]
        elif len(ranges.output) == len(layers):
            index = list(range(len(layers)))
        else:
            raise ConfigError(f"ranges for {len(ranges.output)} layers, the network has "
                              f"{len(layers)} analog matrices; keep the same layers digital "
                              "as in training, or calibrate new ranges (--bits N)")
        for (_, m), k in zip(layers, index, strict=True):
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
                hi.append(_quantile(xin, q))
            else:
                r = _quantile(xin.abs(), q)
                lo.append(-r)
                hi.append(r)
            out.append(_quantile(y.abs(), q))
        return LayerRanges(tuple(lo), tuple(hi), tuple(out),
                           tuple(n for n, _ in net.layers))

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

    def _torch_weights(self, mapping: NetworkMapping, g: torch.Tensor) -> list[torch.Tensor]:
        """Weights (layer shapes) from device conductances in ``mapping.targets`` order:
        W = (G+ - G-) W_max / G_max."""
        out, off = [], 0
        for lm in mapping.layers:
            m = lm.n_weights
            shape = (lm.groups, lm.in_dim, lm.out_dim)
            # the difference written straight into the layer's layout (groups, out, in):
            # one pass and one tensor instead of three, the same arithmetic per element
            w = torch.empty(lm.weight_shape, dtype=g.dtype, device=g.device)
            torch.sub(g[off:off + m].view(shape).transpose(1, 2),
                      g[off + m:off + 2 * m].view(shape).transpose(1, 2),
                      out=w.view(lm.groups, lm.out_dim, lm.in_dim))
            out.append(w.mul_(lm.w_max / mapping.g_max_us))
            off += 2 * m
        return out

    def _gdc_torch(self, mapping: NetworkMapping, g: torch.Tensor
                   ) -> list[npt.NDArray[np.float64]]:
        """Per layer the calibration response whose ratio, at t0 over now, is the drift
        compensation factor alpha (``pcm_model.global_drift_compensation``). Estimators:
        "device_sum" (default) the summed conductance of all the layer's devices, the
        response of an all-ones input on every device; "column_sum" the |column
        responses| to an all-ones input through the differential pairs."""
        out, off = [], 0
        g_double = g.double() if self.gdc_estimator == "device_sum" else g
        for lm in mapping.layers:
            m = lm.n_weights
            if self.gdc_estimator == "device_sum":
                # an all-ones input on every device: the sum of all column currents
                out.append(np.array([float(g_double[off:off + 2 * m].sum())]))
            else:
                # an all-ones input, signed: one response per column of every group
                diff = (g[off:off + m] - g[off + m:off + 2 * m]).double()
                out.append(diff.view(lm.groups, lm.in_dim, lm.out_dim).sum(dim=1)
                           .flatten().cpu().numpy())
            off += 2 * m
        return out

    # -- modes -----------------------------------------------------------------------------
    def simulate(self, x: Data, y: torch.Tensor | None, mapping: NetworkMapping,
                 times_s: npt.ArrayLike, n_runs: int, rng: np.random.Generator, *,
                 pcm: PCMModel | None = None, noise: NoiseSwitches | None = None,
                 metric: Metric | None = None,
                 verify_tolerance: tuple[float, float] = (0.5, 0.04),
                 age_offset_s: npt.ArrayLike | None = None) -> SimulatedAccuracy:
        """Monte Carlo over the statistical PCM model: per run one programming (with the
        calibration's faulty devices and the pair compensation of a deployment) and one set
        of drift exponents, independent read noise at every time. Drift compensation is
        referenced to the programmed state read at t0 (the model's, 20 s).
        ``verify_tolerance``: (µS, share of G_T) of the program-and-verify window, which
        decides which faulty devices a deployment sees as stuck. ``age_offset_s``: per
        device (``device_targets`` order), how much older than ``times_s`` it is (the
        end of programming minus its last pulse, as a deployment's file records): each
        device then drifts and reads its 1/f noise at its own age, and the drift
        reference is each device at t0 + its offset, as the readout nearest t0 is."""
        if n_runs < 1:
            raise ConfigError(f"n_runs = {n_runs}: need at least one run")
        pcm = pcm or PCMModel()
        noise = noise or NoiseSwitches()
        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        t0 = pcm.calibration.t0_s
        _, g_t, _ = self.device_targets(mapping)
        g_t = g_t.astype(np.float64)
        acc = np.empty((n_runs, times.size))
        faults = noise.faults and pcm.calibration.fault_rate > 0
        plus, minus = mapping.pair_positions()

        # Per time only drift and read noise change: they run in torch, float32 (as a chip's
        # conductances are), on the evaluator's device, with Q_s(G_T) computed once. Their
        # normals come from a torch generator seeded from ``rng``: reproducible from it.
        dev = self.device
        q_read = torch.from_numpy(pcm.read_noise_q(g_t).astype(np.float32)).to(dev)
        gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))
        offset = None
        if age_offset_s is not None:
            offset = np.nan_to_num(np.asarray(age_offset_s, dtype=np.float64))
            if offset.shape != g_t.shape or (offset < 0).any():
                raise ConfigError(f"age offsets of shape {offset.shape}: need one "
                                  f"non-negative offset (s) per device, {g_t.size}")
            if not offset.any():
                offset = None

        buffers = {k: torch.empty_like(q_read) for k in ("g", "z", "gq")}

        def read(g_prog: torch.Tensor, nu: torch.Tensor, q: torch.Tensor, t: float
                 ) -> torch.Tensor:
            """pcm.drift and pcm.read_noise_sigma_us at one time t (each device's own
            age, t + its offset, when offsets are given)."""
            if offset is None:
                log_drift: float | torch.Tensor = float(-np.log(max(t, t0) / t0))
                c: float | torch.Tensor = float(np.sqrt(max(float(
                    pcm.read_noise_log_factor(t)), 0.0)))
            else:
                age = t + offset
                log_drift = torch.from_numpy(
                    -np.log(np.maximum(age, t0) / t0).astype(np.float32)).to(dev)
                c = torch.from_numpy(np.sqrt(np.maximum(pcm.read_noise_log_factor(age), 0.0))
                                     .astype(np.float32)).to(dev)
            # into buffers of the simulation (what a read returns is used before the next)
            if not noise.drift or (offset is None and log_drift == 0.0):
                # at t0 and before, exp(nu * -0.0) is 1 exactly: G(t) is G_prog
                g = buffers["g"].copy_(g_prog)
            else:
                g = torch.mul(nu, log_drift, out=buffers["g"]).exp_().mul_(g_prog)
            if noise.read:
                z = buffers["z"].normal_(generator=gen)  # torch.randn's draw
                gq = torch.mul(g, q, out=buffers["gq"])
                if offset is None:
                    g.addcmul_(gq, z, value=float(c))
                else:
                    g.addcmul_(gq, z.mul_(c))
                g.clamp_(min=0.0)
            return g

        def tensor(a: npt.NDArray[np.float64]) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.float32)).to(dev)

        # Q_s and the drift statistics are elementwise in the state: computed once for the
        # targets, and per run only for the devices a fault left elsewhere (the same values
        # as the whole arrays computed anew, bit for bit)
        nu_mean, nu_std = pcm.drift_nu_mean(g_t), pcm.drift_nu_std(g_t)
        sigma_prog = pcm.prog_noise_sigma_us(g_t) if noise.programming else None
        with torch.no_grad():
            for run in range(n_runs):
                g_prog = (pcm.program(g_t, rng, sigma_us=sigma_prog) if noise.programming
                          else g_t.copy())
                q, moved = q_read, None
                if faults:
                    g_prog, g_state = program_with_faults(pcm, g_t, g_prog, plus, minus, rng,
                                                          verify_tolerance,
                                                          noisy=noise.programming,
                                                          copy=False)
                    moved = np.flatnonzero(g_state != g_t)
                    if moved.size:
                        g_moved = g_state[moved]
                        q = q_read.clone()
                        q[torch.from_numpy(moved).to(dev)] = tensor(pcm.read_noise_q(g_moved))
                    else:
                        moved = None
                if noise.drift:
                    # pcm.sample_nu(g_state, rng), its draw and arithmetic, in place in the
                    # draw: |mu + sd z| with the targets' statistics, then the devices a
                    # fault moved with their own
                    z = rng.standard_normal(nu_mean.shape, dtype=nu_mean.dtype)
                    z_moved = None if moved is None else z[moved]
                    z *= nu_std
                    z += nu_mean
                    np.abs(z, out=z)
                    if moved is not None:
                        z[moved] = np.abs(pcm.drift_nu_mean(g_moved)
                                          + pcm.drift_nu_std(g_moved) * z_moved)
                    nu = tensor(z)
                else:
                    nu = tensor(np.zeros_like(g_t))
                g_prog_t = tensor(g_prog)
                reference = None
                if noise.drift_compensation:
                    reference = self._gdc_torch(mapping, read(g_prog_t, nu, q, t0))
                for j, t in enumerate(times):
                    g = read(g_prog_t, nu, q, float(t))
                    gdc = None
                    if reference is not None:
                        now = self._gdc_torch(mapping, g)
                        gdc = [global_drift_compensation(r, c)
                               for r, c in zip(reference, now, strict=True)]
                    acc[run, j] = self.evaluate(x, y, self._torch_weights(mapping, g), gdc,
                                                metric=metric)
        return SimulatedAccuracy(times, acc, noise.describe(pcm))

    def measured(self, x: Data, y: torch.Tensor | None, mapping: NetworkMapping,
                 g_rows_us: npt.ArrayLike, *, drift_compensation: bool = True,
                 time_s: npt.ArrayLike | None = None, t0_s: float = 20.0,
                 metric: Metric | None = None) -> npt.NDArray[np.float64]:
        """One metric value per readout row (conductances in ``mapping.targets`` order).
        Drift compensation is referenced to the readout nearest t0 when ``time_s`` (s since
        programming, one per row) is given, else to the first row."""
        rows = np.asarray(g_rows_us, dtype=np.float32)
        out = np.empty(rows.shape[0])
        ref_row = 0 if time_s is None else int(np.argmin(np.abs(np.asarray(time_s) - t0_s)))
        need = sum(lm.n_cells for lm in mapping.layers)
        if rows.ndim != 2 or rows.shape[1] < need:
            raise ConfigError(f"readouts of shape {rows.shape}: each row needs the {need} "
                              "device conductances of the network")
        reference = None
        if drift_compensation and rows.shape[0]:
            reference = self._gdc_torch(mapping, torch.from_numpy(rows[ref_row]))
        for i, row in enumerate(rows):
            g = torch.from_numpy(row).to(self.device)
            gdc = None
            if reference is not None:
                gdc = [global_drift_compensation(r, c) for r, c in
                       zip(reference, self._gdc_torch(mapping, g), strict=True)]
            out[i] = self.evaluate(x, y, self._torch_weights(mapping, g), gdc, metric=metric)
        return out


def _quantile(v: torch.Tensor, q: float) -> float:
    """``torch.quantile(v, q)`` (linear interpolation) bit for bit, by selection instead of
    a full sort: its rank arithmetic in v's dtype, the two order statistics around the rank
    (``kthvalue``), and its lerp. NaN in v: torch.quantile itself."""
    flat = v.flatten()
    if flat.numel() == 0 or bool(torch.isnan(flat).any()):
        return float(torch.quantile(v, q))
    rank = torch.full((), q, dtype=flat.dtype) * (flat.numel() - 1)
    below = rank.to(torch.long)
    above = torch.ceil(rank).to(torch.long)
    low = torch.kthvalue(flat, int(below) + 1).values
    high = low if int(above) == int(below) else torch.kthvalue(flat, int(above) + 1).values
    return float(low.clone().lerp_(high, rank - below))


def program_with_faults(
    pcm: PCMModel, g_target_us: npt.NDArray[np.float64], g_prog_us: npt.NDArray[np.float64],
    plus: npt.NDArray[np.intp], minus: npt.NDArray[np.intp], rng: np.random.Generator,
    verify_tolerance: tuple[float, float] = (0.5, 0.04), *, noisy: bool = True,
    copy: bool = True,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The programmed state of a chip with the calibration's faulty devices, after the pair
    compensation of ``protocols.program_verify.program_pairs``: (G_prog, the state each
    device was left in, for its drift exponent and read noise), both µS.

    Stuck devices keep their conductance; a weak device reaches no more than its ceiling. A
    faulty device outside the verify window is taken as stuck, and its partner (when good)
    is programmed so that the pair's difference is the intended one (capped at G_max; a
    negative partner target leaves the partner as it was). ``copy=False``: G_prog is
    written into ``g_prog_us`` (a caller that needs it no more saves a copy)."""
    g_max = pcm.calibration.g_max_us
    kind, g_fault = pcm.sample_faults(g_target_us.size, rng)
    g = g_prog_us.copy() if copy else g_prog_us
    state = g_target_us.copy()
    # the arithmetic on the faulty devices and the pairs with one failed device only (the
    # same values as over whole arrays: a few percent of the work)
    bad = np.flatnonzero(kind != OK)
    kind_bad = kind[bad]
    weak = bad[kind_bad == WEAK]
    stuck = bad[(kind_bad == STUCK_RESET) | (kind_bad == STUCK_SET)]
    g[weak] = np.minimum(g[weak], g_fault[weak])
    state[weak] = np.minimum(state[weak], g_fault[weak])
    g[stuck] = state[stuck] = g_fault[stuck]
    window = verify_tolerance[0] + verify_tolerance[1] * g_target_us[bad]
    failed = np.zeros(g_target_us.size, dtype=np.bool_)
    failed[bad] = np.abs(state[bad] - g_target_us[bad]) > window
    failed_p, failed_m = failed[plus], failed[minus]
    one = np.flatnonzero(failed_p != failed_m)  # pairs with exactly one failed device
    p1, m1 = plus[one], minus[one]
    diff = g_target_us[p1] - g_target_us[m1]
    fix_m = failed_p[one] & (g[p1] - diff > 0)
    fix_p = failed_m[one] & (g[m1] + diff > 0)
    redo = np.concatenate([m1[fix_m], p1[fix_p]])
    new = np.minimum(np.concatenate([g[p1][fix_m] - diff[fix_m],
                                     g[m1][fix_p] + diff[fix_p]]), g_max)
    if redo.size:
        state[redo] = new
        g[redo] = np.maximum(new + (pcm.prog_noise_sigma_us(new) * rng.standard_normal(new.size)
                                    if noisy else 0.0), 0.0)
        kind_redo = kind[redo]
        again = redo[kind_redo != OK]  # a faulty partner stays what it is
        kind_again = kind_redo[kind_redo != OK]
        stuck_again = (kind_again == STUCK_RESET) | (kind_again == STUCK_SET)
        g[again] = np.where(stuck_again, g_fault[again], np.minimum(g[again], g_fault[again]))
        state[again] = np.where(stuck_again, g_fault[again],
                                np.minimum(state[again], g_fault[again]))
    return g, state
