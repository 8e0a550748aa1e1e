"""The mock chip's in-array matrix-vector multiplication, computed physically.

Inputs are signed DAC codes c_i; a code drives its row for a time proportional to |c_i|
at the read voltage, positive codes in one phase and negative codes in a second phase of
opposite polarity (PWM in two phases, as IBM's HERMES cores apply inputs). The charge a
column integrates is sum_i G_i(t) V (|c_i| / c_max) T sign(c_i) with G_i(t) the device's
conductance at the time of the request: drift and the 1/f read noise of a read at that
moment (one read of the region serves the request's vectors, which are applied within
microseconds of each other, well inside the correlation time of all but the white part
of the noise). In the units of ``pcmlab.mvm`` the column's value is
s_j = sum_i (G_ij / G_max) (c_i / c_max).

IR drop along the bit line (``ir_drop`` > 0, off by default), to first order: a device
further from the column's sense amplifier sees the read voltage reduced in proportion to
its distance and to the column's load, s_j = sum_i g_ij x_i (1 - ir_drop (i + 1) / rows
L_j) with L_j = sum_k g_kj |x_k| / rows the column's mean load; the form of aihwkit's
``IOParameters.ir_drop`` (Rasch et al., Nat. Commun. 14, 5282, 2023), without its
iterative solution.

The ADC of each output column has its own gain and offset (drawn once per chip from
``adc_gain_std`` and ``adc_offset_std_lsb``), adds noise of ``adc_noise_lsb`` per
conversion, rounds and saturates at +-adc_max:

    code_j = clip(round(gain_j s_j / full_scale adc_max + offset_j + noise), -adc_max, adc_max)

In differential mode the column pair (2k, 2k+1) is one output: s_2k - s_2k+1 (G+ - G-).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import Field

from pcmlab.config import StrictModel
from pcmlab.mvm import MvmRequest, MvmSpec


class MvmPeriphery(StrictModel):
    """The mock chip's MVM periphery."""

    enabled: bool = Field(True, description="the chip has the MVM capability")
    dac_bits: int = Field(8, ge=2, le=16, description="input DAC resolution (signed)")
    adc_bits: int = Field(8, ge=2, le=16, description="output ADC resolution (signed)")
    max_vectors: int = Field(65536, ge=1, description="most vectors in one request")
    adc_gain_std: float = Field(0.02, ge=0, description="per-column ADC gain mismatch "
                                "(relative std)")
    adc_offset_std_lsb: float = Field(0.5, ge=0, description="per-column ADC offset (std, "
                                      "in LSB)")
    adc_noise_lsb: float = Field(0.3, ge=0, description="noise per conversion (std, LSB)")
    ir_drop: float = Field(0.0, ge=0, le=1, description="first-order IR drop along the bit "
                           "line (0: none)")

    def spec(self) -> MvmSpec:
        return MvmSpec(dac_bits=self.dac_bits, adc_bits=self.adc_bits,
                       max_vectors=self.max_vectors)


class MvmUnit:
    """The per-column ADC mismatch of one chip, and the computation."""

    def __init__(self, config: MvmPeriphery, cols: int, rng: np.random.Generator) -> None:
        self.config = config
        self.gain = (1.0 + config.adc_gain_std * rng.standard_normal(cols)).astype(np.float32)
        self.offset = (config.adc_offset_std_lsb * rng.standard_normal(cols)).astype(np.float32)

    def check(self, request: MvmRequest, rows: int, cols: int) -> str | None:
        """Why the chip refuses ``request`` (data out of range), or None."""
        c, r = self.config, request.region
        n = request.inputs.shape[0]
        if r.rows < 1 or r.cols < 1 or r.row0 + r.rows > rows or r.col0 + r.cols > cols:
            return (f"region rows {r.row0}..{r.row0 + r.rows - 1}, columns {r.col0}.."
                    f"{r.col0 + r.cols - 1} is outside the {rows} x {cols} array")
        if request.differential and r.cols % 2:
            return f"a differential region needs an even number of columns, not {r.cols}"
        if not (np.isfinite(request.full_scale) and request.full_scale > 0):
            return f"full scale {request.full_scale} must be a positive number"
        if n > c.max_vectors:
            return f"{n} vectors: at most {c.max_vectors} per request"
        dac_max = c.spec().dac_max
        if n and int(np.abs(request.inputs.astype(np.int32)).max()) > dac_max:
            return f"an input code beyond +-{dac_max} ({c.dac_bits}-bit DAC)"
        return None

    def compute(self, request: MvmRequest, g_us: npt.NDArray[np.float32], g_max_us: float,
                rng: np.random.Generator) -> npt.NDArray[np.int16]:
        """ADC codes (n, outputs) for the region's conductances ``g_us`` (rows, cols)."""
        c = self.config
        spec = c.spec()
        x = request.inputs.astype(np.float32) / np.float32(spec.dac_max)  # (n, rows)
        g = g_us.astype(np.float32) / np.float32(g_max_us)  # (rows, cols)
        s = x @ g
        if c.ir_drop > 0:
            rows = g.shape[0]
            load = (np.abs(x) @ g) / rows  # (n, cols): the column's mean load
            pos = (np.arange(1, rows + 1, dtype=np.float32) / rows)[:, None]
            s -= np.float32(c.ir_drop) * load * (x @ (g * pos))
        cols = slice(request.region.col0, request.region.col0 + request.region.cols)
        gain, offset = self.gain[cols], self.offset[cols]
        if request.differential:
            s = s[:, 0::2] - s[:, 1::2]
            gain, offset = gain[0::2], offset[0::2]  # the pair's ADC sits on its G+ column
        v = s * (gain * np.float32(spec.adc_max / request.full_scale)) + offset
        if c.adc_noise_lsb > 0:
            v += np.float32(c.adc_noise_lsb) * rng.standard_normal(v.shape, dtype=np.float32)
        return np.clip(np.rint(v), -spec.adc_max, spec.adc_max).astype(np.int16)
