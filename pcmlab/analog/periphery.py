"""The crossbar's periphery: DAC and ADC settings, their ranges, and the quantizers.

Both quantizers are torch's fused fake-quantize kernels: a uniform grid with a level at
zero, unsigned over [0, hi] or symmetric over [-hi, hi], saturating beyond the range,
straight-through gradient inside it. The learned-range quantizer (hardware-aware
training) also passes a gradient to the range (LSQ, Esser et al. 2020, the form torch's
``_LearnableFakeQuantize`` uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from pcmlab.config import StrictModel

_ZERO_POINT = torch.zeros(1, dtype=torch.int32)
_ZERO_POINT_F = torch.zeros(1)


class Periphery(StrictModel):
    """DAC and ADC of the crossbar (None: not quantized)."""

    dac_bits: int | None = Field(8, ge=1, le=24, description="input DAC resolution; None: "
                                 "no input quantization")
    adc_bits: int | None = Field(8, ge=1, le=24, description="output ADC resolution; None: "
                                 "no output quantization")
    adc_gain: float = Field(1.0, gt=0, description="one ADC gain shared by all layers")
    range_percentile: float = Field(99.99, gt=50, le=100,
                                    description="calibrated ranges cover this share")


@dataclass(frozen=True)
class LayerRanges:
    """Per analog layer: DAC input range [lo, hi] and ADC output range [-out, out].
    ``names``: the layers' names (module paths), when known, so that ranges find their
    layers even if other layers are kept digital."""

    input_lo: tuple[float, ...]
    input_hi: tuple[float, ...]
    output: tuple[float, ...]
    names: tuple[str, ...] | None = None


def levels(bits: int, signed: bool) -> tuple[int, int]:
    """(qmin, qmax) of a grid with a level at zero."""
    if signed:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def quantize(x: torch.Tensor, lo: float, hi: float, bits: int, *, inplace: bool = False
             ) -> torch.Tensor:
    """Uniform quantizer with a level at zero: unsigned over [0, hi] when lo >= 0, else
    symmetric over [-max(|lo|, hi), +max(|lo|, hi)]. Values beyond the range saturate.
    ``inplace``: overwrite ``x`` (without autograd only; the same arithmetic)."""
    signed = lo < 0
    qmin, qmax = levels(bits, signed)
    m = max(-lo, hi) if signed else hi
    step = m / qmax if m > 0 and qmax > 0 else 1.0
    if x.requires_grad and torch.is_grad_enabled():
        return torch.fake_quantize_per_tensor_affine(x, step, 0, qmin, qmax)
    # Without autograd the same arithmetic in place is about 20x faster on the CPU than the
    # fused kernel (which also builds its backward mask); x * (1 / step) as torch does it.
    q = x.mul_(1.0 / step) if inplace else torch.mul(x, 1.0 / step)
    return q.round_().clamp_(qmin, qmax).mul_(step)


def quantize_learned(x: torch.Tensor, hi: torch.Tensor, bits: int, *, signed: bool,
                     keep: float = 0.0) -> torch.Tensor:
    """Quantizer with a learned range ``hi`` (a positive 0-d tensor): gradients reach ``x``
    inside the range and ``hi`` (through the step). ``keep``: share of values left
    unquantized (quantization-noise training), clipped to the range all the same."""
    qmin, qmax = levels(bits, signed)
    scale = (hi / qmax).reshape(1)
    q = torch._fake_quantize_learnable_per_tensor_affine(
        x, scale, _ZERO_POINT_F.to(x.device), qmin, qmax, 1.0)
    if keep > 0:
        lo = -hi if signed else torch.zeros_like(hi)
        xc = torch.minimum(torch.maximum(x, lo), hi)
        q = torch.where(torch.rand_like(x) < keep, xc, q)
    return q
