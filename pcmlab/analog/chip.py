"""Chip mode: the analog layers' matrix-vector products computed by the chip.

With a ``ChipBackend`` installed on a network (``AnalogState.chip``), every analog layer
turns its input into DAC codes with its calibrated input range, sends them tile by tile to
the chip's in-array MVM (an ``MvmChip``: ``CrossbarDriver.mvm`` through
``protocols.chip_inference``, differential column pairs as the mapping placed them) and
turns the ADC codes back into its output: for a tile with weight scale W_max and input
range h,

    y = code * full_scale / adc_max * W_max * h,    full_scale = ADC range / (W_max h)

so the chip's ADC covers the layer's calibrated output range. What the network sees is
the periphery's output (noise, gain, offsets, saturation), not the conductances. A tile
that holds part of a layer's inputs adds its output digitally to the others'.

Then, digitally, per layer: an optional global drift-compensation factor, then an optional
per-output affine correction (``ChipCalibration``, fitted on the chip's own, compensated
outputs by ``protocols.chip_inference.calibrate``), and the layer's bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from pcmlab.mvm import MvmSpec

if TYPE_CHECKING:
    from pcmlab.analog.convert import AnalogNetwork
    from pcmlab.analog.layers import AnalogMatrix
    from pcmlab.mapping import LayerMap, NetworkMapping


class MvmChip(Protocol):
    """What chip mode needs of a chip: its MVM periphery and the MVM itself (the core
    knows no driver; ``protocols.chip_inference.mvm_chip`` makes one of a
    ``CrossbarDriver``)."""

    @property
    def periphery(self) -> MvmSpec:
        """DAC and ADC resolution and the most vectors per request."""
        ...

    def mvm(self, region: tuple[int, int, int, int], inputs: npt.NDArray[np.int16], *,
            full_scale: float, differential: bool = True) -> npt.NDArray[np.int16]:
        """ADC codes (n, outputs) of ``inputs`` (n, rows; DAC codes) on ``region`` (row0,
        col0, rows, cols), as ``CrossbarDriver.mvm``."""
        ...


@dataclass
class ChipCalibration:
    """Per analog layer (mapping index): output scale and offset, one per output."""

    scale: dict[int, torch.Tensor] = field(default_factory=dict)
    offset: dict[int, torch.Tensor] = field(default_factory=dict)


class ChipBackend:
    """Runs a network's analog MACs on a chip (see the module docstring)."""

    def __init__(self, chip: MvmChip, mapping: NetworkMapping,
                 network: AnalogNetwork) -> None:
        self.chip = chip
        self.spec = chip.periphery
        self.mapping = mapping
        self.layer_of: dict[int, LayerMap] = {
            id(m): lm for m, lm in zip(network.matrices, mapping.layers, strict=True)}
        self.gdc: dict[int, float] = {}
        self.calibration: ChipCalibration | None = None
        self.capture: int | None = None  # layer index whose outputs are being recorded
        self.captured: list[tuple[torch.Tensor, torch.Tensor]] = []  # (chip, ideal)
        self.mvm_calls = 0
        # physics-aware training: the forward is the chip's, the backward that of the
        # programmed weights (straight through), so digital parameters before a layer
        # get gradients through it
        self.physics_aware = False

    # -- the MAC ---------------------------------------------------------------------------
    def _codes(self, layer: AnalogMatrix, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """DAC codes of ``x`` with the layer's input range, and that range."""
        hi = float(layer.input_range().detach()) if layer.has_ranges else float(
            x.detach().abs().max().clamp(min=1e-12))
        c = self.spec.dac_max
        codes = torch.clamp(torch.round(x / hi * c), -c, c)
        return codes, hi

    def _full_scale(self, layer: AnalogMatrix, lm: LayerMap, hi: float) -> float:
        out = float(layer.output_range().detach()) if layer.has_ranges else 1.0
        return max(out / (lm.w_max * hi), 1e-6)

    def _matmul(self, layer: AnalogMatrix, lm: LayerMap, rows: torch.Tensor, hi: float
                ) -> torch.Tensor:
        """(M, groups * in_dim) codes -> (M, groups * out_dim) outputs, tile by tile."""
        m = rows.shape[0]
        fs = self._full_scale(layer, lm, hi)
        x = rows.reshape(m, lm.groups, lm.in_dim).to(torch.int16).cpu().numpy()
        y = np.zeros((m, lm.groups, lm.out_dim), dtype=np.float32)
        unit = np.float32(fs / self.spec.adc_max * lm.w_max * hi)
        for t in lm.tiles:
            region = (t.array * self.mapping.rows + t.row0, t.col0, t.n_in, 2 * t.n_out)
            codes = self.chip.mvm(region, x[:, t.group, t.in_start:t.in_stop],
                                    full_scale=fs, differential=True)
            self.mvm_calls += 1
            y[:, t.group, t.out_start:t.out_stop] += codes.astype(np.float32) * unit
        return torch.from_numpy(y.reshape(m, lm.groups * lm.out_dim)).to(rows.device)

    def mac(self, layer: AnalogMatrix, x: torch.Tensor) -> torch.Tensor:
        """The layer's MAC on the chip, in the layer's output layout (no bias)."""
        if self.physics_aware and torch.is_grad_enabled():
            with torch.no_grad():
                y = self._chip_mac(layer, x.detach())
            ideal = layer.mac(x, layer.weight.detach())
            return y + (ideal - ideal.detach())
        return self._chip_mac(layer, x)

    def _chip_mac(self, layer: AnalogMatrix, x: torch.Tensor) -> torch.Tensor:
        from pcmlab.analog.layers import AnalogConv

        lm = self.layer_of[id(layer)]
        codes, hi = self._codes(layer, x)
        if not isinstance(layer, AnalogConv):
            lead = codes.shape[:-1]
            y = self._matmul(layer, lm, codes.reshape(-1, codes.shape[-1]), hi)
            return y.reshape(*lead, y.shape[-1])
        # the layer's own padding amounts (torch's, for numbers, "same"/"valid" and every
        # padding mode), applied to the codes; then im2col without padding
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        c = F.pad(codes, layer._pad, mode=mode)
        one_d = codes.dim() == 3
        stride, dil, kernel = layer.stride, layer.dilation, tuple(layer.weight.shape[2:])
        if one_d:
            c = c.unsqueeze(2)
            stride, dil, kernel = (1, stride[0]), (1, dil[0]), (1, kernel[0])
        n = c.shape[0]
        cols = F.unfold(c, kernel, dilation=dil, stride=stride)  # (N, rows, L)
        length = cols.shape[-1]
        y = self._matmul(layer, lm, cols.transpose(1, 2).reshape(n * length, -1), hi)
        out_channels = y.shape[-1]
        spatial = _out_size(c.shape[2:], kernel, stride, dil)
        y = y.reshape(n, length, out_channels).transpose(1, 2).reshape(n, out_channels,
                                                                       *spatial)
        return y.squeeze(2) if one_d else y

    # -- digital corrections ---------------------------------------------------------------
    def finish(self, layer: AnalogMatrix, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer's drift-compensation factor, then its calibrated affine correction;
        while calibrating a layer, its (compensated chip, ideal) outputs are recorded."""
        from pcmlab.analog.layers import AnalogConv

        lm = self.layer_of[id(layer)]
        channel = 1 if isinstance(layer, AnalogConv) else -1
        alpha = self.gdc.get(lm.index, 1.0)
        if alpha != 1.0:
            y = y * alpha
        if self.capture == lm.index:
            with torch.no_grad():
                ideal = layer.mac(x.detach(), layer.weight.detach())
            self.captured.append((_channels_last(y, channel), _channels_last(ideal, channel)))
        cal = self.calibration
        if cal is not None and lm.index in cal.scale:
            shape = [1] * y.dim()
            shape[channel] = -1
            y = y * cal.scale[lm.index].view(shape) + cal.offset[lm.index].view(shape)
        return y


def _channels_last(y: torch.Tensor, channel: int) -> torch.Tensor:
    """(samples, channels) of a layer output."""
    if channel == -1:
        return y.detach().reshape(-1, y.shape[-1])
    return y.detach().movedim(1, -1).reshape(-1, y.shape[1])


def _out_size(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
              dil: tuple[int, ...]) -> tuple[int, ...]:
    """Output size of an unpadded convolution (the input is padded already)."""
    return tuple((s - d * (k - 1) - 1) // st + 1
                 for s, k, st, d in zip(size, kernel, stride, dil, strict=True))
