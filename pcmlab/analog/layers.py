"""Analog twins of torch's weight layers: the one forward of a crossbar layer.

Every analog layer computes, in every mode (ideal, simulated, measured, training):

    x -> DAC (per-layer input range) -> MAC with the crossbar weight
      -> ADC (per-layer output range / the shared ADC gain) -> drift compensation
      -> digital bias

The crossbar weight is the layer's float weight (ideal mode, training) or the weight read
back from conductances (``programmed``, set by the evaluator). Training adds weight
clipping at ``w_clip`` and Gaussian weight noise of ``eta * w_clip`` per forward pass
(straight-through), and the ranges can be learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pcmlab.analog.periphery import Periphery, quantize, quantize_learned

_LOG_FLOOR = -20.0  # ranges are exp(log); the floor keeps them from underflowing to zero
_RECORD_CAP = 1_000_000  # calibration samples kept per layer and per quantity


@dataclass
class AnalogState:
    """What all analog layers of one network share: the periphery, the mode switches, the
    training noise and the calibration recorder."""

    periphery: Periphery
    log_gain: nn.Parameter = field(default_factory=lambda: nn.Parameter(torch.zeros(())))
    quantized: bool = True
    learn_ranges: bool = False
    eta: float = 0.0  # training weight noise, relative to w_clip
    quant_noise: float = 0.0  # share of values left unquantized in training
    recording: bool = False
    noise_std: list[float] = field(default_factory=list)  # injected std, last forward
    chip: Any = None  # a ChipBackend: the MACs run on the chip (pcmlab.analog.chip)

    @property
    def gain(self) -> torch.Tensor:
        return torch.exp(self.log_gain.clamp(_LOG_FLOOR, -_LOG_FLOOR))


class AnalogMatrix(nn.Module):
    """One weight matrix on the crossbar (base of the analog layer kinds)."""

    kind = "Linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 state: AnalogState) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        object.__setattr__(self, "state", state)  # shared, so not a child module
        self.log_in = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.log_out = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.w_clip = math.inf  # training: weights clipped at +-w_clip (AnalogNets stage 2)
        self.input_signed = True
        self.has_ranges = False
        self.programmed: torch.Tensor | None = None  # weight from conductances
        self.gdc = 1.0  # global drift compensation factor
        self.recorded: dict[str, list[torch.Tensor]] = {"x": [], "y": []}
        self.x_min = math.inf
        self._range_cache: dict[str, tuple[tuple[float, ...], float]] = {}

    # -- what the kinds define -------------------------------------------------------------
    @property
    def groups(self) -> int:
        return 1

    def mac(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    def add_bias(self, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if self.bias is None:
            return y
        return y.add_(self.bias) if inplace else y + self.bias

    # -- ranges ----------------------------------------------------------------------------
    def set_ranges(self, input_lo: float, input_hi: float, output: float) -> None:
        """Fix the DAC range [lo, hi] (symmetric when lo < 0) and the ADC range."""
        with torch.no_grad():
            self.log_in.fill_(math.log(max(abs(input_lo), input_hi, 1e-6)))
            self.log_out.fill_(math.log(max(output, 1e-6)))
        self.input_signed = input_lo < 0
        self.has_ranges = True

    def input_range(self) -> torch.Tensor:
        return torch.exp(self.log_in.clamp(min=_LOG_FLOOR))

    def output_range(self) -> torch.Tensor:
        """The ADC's full scale referred to the MAC output: range / shared gain."""
        return torch.exp(self.log_out.clamp(min=_LOG_FLOOR)) / self.state.gain

    def ranges(self) -> tuple[float, float, float]:
        """(input_lo, input_hi, output) as floats."""
        hi = float(self.input_range().detach())
        return (-hi if self.input_signed else 0.0), hi, float(
            torch.exp(self.log_out.detach().clamp(min=_LOG_FLOOR)))

    # -- the forward -----------------------------------------------------------------------
    def crossbar_weight(self) -> torch.Tensor:
        w = self.weight if self.programmed is None else self.programmed
        clip = self.w_clip
        if math.isfinite(clip):
            w = torch.clamp(w, -clip, clip)
            st = self.state
            if self.training and st.eta > 0:
                noise = torch.randn_like(w) * (st.eta * clip)
                st.noise_std.append(float(noise.std()))
                w = w + noise.detach()  # straight through: d(w + n)/dw = 1
        return w

    def _convert(self, v: torch.Tensor, which: str, bits: int, signed: bool,
                 inplace: bool = False) -> torch.Tensor:
        """DAC (``which`` "in") or ADC ("out") conversion of ``v`` over the layer's range."""
        st = self.state
        if st.learn_ranges and self.training:
            hi = self.input_range() if which == "in" else self.output_range()
            return quantize_learned(v, hi, bits, signed=signed, keep=st.quant_noise)
        h = self._range_value(which)
        return quantize(v, -h if signed else 0.0, h, bits, inplace=inplace)

    def _range_value(self, which: str) -> float:
        """``input_range()`` or ``output_range()`` as a float, computed again only when a
        parameter it depends on holds another value. The key is the values themselves (a
        scalar read is cheap; the ops on 0-d tensors are not): a write through ``.data``
        moves no version counter, so nothing less would see every change. A forward
        without autograd would otherwise spend a tenth of a small layer's time here."""
        deps = (self.log_in,) if which == "in" else (self.log_out, self.state.log_gain)
        key = tuple(float(t.detach()) for t in deps)
        cached = self._range_cache.get(which)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = float((self.input_range() if which == "in" else self.output_range()).detach())
        self._range_cache[which] = (key, value)
        return value

    def _record(self, name: str, v: torch.Tensor) -> None:
        flat = v.detach().flatten()
        if name == "x":
            self.x_min = min(self.x_min, float(flat.min()))
        have = sum(t.numel() for t in self.recorded[name])
        room = _RECORD_CAP - have
        if room <= 0:
            return
        if flat.numel() > room:
            gen = torch.Generator().manual_seed(have)
            flat = flat.cpu()[torch.randperm(flat.numel(), generator=gen)[:room]]
        self.recorded[name].append(flat.cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.state
        if st.chip is not None:  # chip mode: DAC, MAC and ADC happen on the chip
            return self.add_bias(st.chip.finish(self, st.chip.mac(self, x), x))
        p = st.periphery
        quantized = st.quantized and self.has_ranges
        if st.recording:
            self._record("x", x)
        if quantized and p.dac_bits is not None:
            x = self._convert(x, "in", p.dac_bits, self.input_signed)
        y = self.mac(x, self.crossbar_weight())
        # the MAC's output is this layer's own: without autograd (and when nothing keeps a
        # view of it) the ADC, the drift compensation and the bias overwrite it, with the
        # same arithmetic, instead of allocating three more tensors
        inplace = not (st.recording or torch.is_grad_enabled())
        if st.recording:
            self._record("y", y)
        if quantized and p.adc_bits is not None:
            y = self._convert(y, "out", p.adc_bits, True, inplace)
        if self.gdc != 1.0:
            y = y.mul_(self.gdc) if inplace else y * self.gdc
        return self.add_bias(y, inplace)

    def clipped_weight(self) -> torch.Tensor:
        """The float weight as training leaves it: clipped at +-w_clip."""
        w = self.weight.detach()
        return w.clamp(-self.w_clip, self.w_clip) if math.isfinite(self.w_clip) else w

    @torch.no_grad()
    def export_to(self, m: nn.Module, weight: str = "weight", bias: str = "bias") -> None:
        """Write this layer's (clipped) weight and bias into a float module."""
        getattr(m, weight).copy_(self.clipped_weight())
        if self.bias is not None:
            getattr(m, bias).copy_(self.bias.detach())

    def extra_repr(self) -> str:
        return f"{self.kind}, weight {tuple(self.weight.shape)}, bias={self.bias is not None}"


class AnalogLinear(AnalogMatrix):
    """``nn.Linear`` on the crossbar."""

    kind = "Linear"

    @classmethod
    def from_module(cls, m: nn.Linear, state: AnalogState) -> AnalogLinear:
        return cls(m.weight, m.bias, state)


class AnalogConv(AnalogMatrix):
    """``nn.Conv1d`` / ``nn.Conv2d`` on the crossbar (im2col on the array: one matrix of
    in/groups * prod(kernel) rows per group), any stride, padding, dilation and groups."""

    def __init__(self, m: nn.Conv1d | nn.Conv2d, state: AnalogState) -> None:
        super().__init__(m.weight, m.bias, state)
        self.kind = type(m).__name__ if type(m) in (nn.Conv1d, nn.Conv2d) else (
            f"Conv{m.weight.dim() - 2}d")
        self.stride = m.stride
        self.padding = m.padding
        self.dilation = m.dilation
        self._groups = m.groups
        self.padding_mode = m.padding_mode
        self._pad = m._reversed_padding_repeated_twice
        self._conv = F.conv1d if m.weight.dim() == 3 else F.conv2d

    @classmethod
    def from_module(cls, m: nn.Conv1d | nn.Conv2d, state: AnalogState) -> AnalogConv:
        return cls(m, state)

    @property
    def groups(self) -> int:
        return self._groups

    def mac(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as torch's own _conv_forward does
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return self._conv(x, w, None, self.stride, 0, self.dilation, self._groups)
        return self._conv(x, w, None, self.stride, self.padding, self.dilation, self._groups)

    def add_bias(self, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if self.bias is None:
            return y
        bias = self.bias.view((1, -1) + (1,) * (y.dim() - 2))
        return y.add_(bias) if inplace else y + bias
