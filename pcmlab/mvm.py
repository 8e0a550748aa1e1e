"""Matrix-vector multiplication on the chip: one request layout for both wires.

A chip with the MVM capability applies a batch of input vectors, as signed DAC codes, to
the rows of a rectangular region of its array and returns one signed ADC code per output
column and vector. The payload (little-endian) is the same in the SCPI block of ``MVM?``
and in the serial ``MVM`` frame::

    row0 u32 | col0 u32 | rows u32 | cols u32 | differential u32 | full_scale f32 | n u32
    | n x rows x int16 input codes (vector after vector)

and the reply is ``n x outputs`` int16 ADC codes, ``outputs = cols / 2`` when
``differential`` is 1 (column pairs 2k, 2k+1 of the region: G+ minus G-, as the mapping
places weights) and ``cols`` when it is 0 (single-ended). ``full_scale`` is the ADC's
full scale in units of one device at G_max driven by a full-scale input for the whole
integration: a column whose summed, normalized current sum_i (G_i / G_max) (c_i / c_max)
reaches ``full_scale`` gives the largest ADC code. With those units a host converts back:

    sum_i (G_i / G_max) (c_i / c_max)  ~=  code * full_scale / adc_max

where c_max = 2^(dac_bits - 1) - 1 and adc_max = 2^(adc_bits - 1) - 1 (``MvmSpec``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import Field

from pcmlab.config import StrictModel

MVM_HEAD = struct.Struct("<IIIIIfI")  # row0, col0, rows, cols, differential, full_scale, n
MVM_SPEC = struct.Struct("<III")  # dac_bits, adc_bits, max_vectors
CODE = np.dtype("<i2")


class MvmSpec(StrictModel):
    """What a chip's MVM periphery is (``MVM:CONF?``, the serial ``MVM_CONFIG``)."""

    dac_bits: int = Field(ge=2, le=16, description="input DAC resolution (signed codes)")
    adc_bits: int = Field(ge=2, le=16, description="output ADC resolution (signed codes)")
    max_vectors: int = Field(ge=1, description="most input vectors in one request")

    @property
    def dac_max(self) -> int:
        return 2 ** (self.dac_bits - 1) - 1

    @property
    def adc_max(self) -> int:
        return 2 ** (self.adc_bits - 1) - 1


class MvmRegion(NamedTuple):
    """A rectangle of the array: rows [row0, row0 + rows), columns [col0, col0 + cols)."""

    row0: int
    col0: int
    rows: int
    cols: int


@dataclass(frozen=True)
class MvmRequest:
    region: MvmRegion
    differential: bool
    full_scale: float
    inputs: npt.NDArray[np.int16]  # (n, rows)

    @property
    def outputs(self) -> int:
        return self.region.cols // 2 if self.differential else self.region.cols


class MvmFormatError(ValueError):
    """A request payload that is not the layout above (the wire's block/format error)."""


def encode_request(request: MvmRequest) -> bytes:
    r = request.region
    codes = np.ascontiguousarray(request.inputs, dtype=CODE)
    return MVM_HEAD.pack(r.row0, r.col0, r.rows, r.cols, int(request.differential),
                         request.full_scale, codes.shape[0]) + codes.tobytes()


def decode_request(payload: bytes) -> MvmRequest:
    if len(payload) < MVM_HEAD.size:
        raise MvmFormatError(f"MVM payload of {len(payload)} bytes is shorter than its "
                             f"{MVM_HEAD.size}-byte head")
    row0, col0, rows, cols, diff, full_scale, n = MVM_HEAD.unpack_from(payload)
    if diff not in (0, 1):
        raise MvmFormatError(f"MVM differential flag {diff}: 0 or 1")
    body = len(payload) - MVM_HEAD.size
    if body != n * rows * CODE.itemsize:
        raise MvmFormatError(f"MVM of {n} vectors of {rows} rows needs "
                             f"{n * rows * CODE.itemsize} bytes of codes, got {body}")
    codes = np.frombuffer(payload, CODE, offset=MVM_HEAD.size).reshape(n, rows)
    return MvmRequest(MvmRegion(row0, col0, rows, cols), bool(diff), float(full_scale), codes)


def decode_reply(payload: bytes, n: int, outputs: int) -> npt.NDArray[np.int16]:
    if len(payload) != n * outputs * CODE.itemsize:
        raise MvmFormatError(f"MVM reply of {len(payload)} bytes for {n} vectors x "
                             f"{outputs} outputs")
    return np.frombuffer(payload, CODE).reshape(n, outputs).astype(np.int16)
