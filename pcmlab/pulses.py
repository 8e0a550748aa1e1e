"""Pulse kinds and the hard-limit checks every chip and driver applies before acting.

One implementation serves the mock chip (as firmware would) and every driver (before a
byte is sent), so a request is refused the same way everywhere.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import numpy.typing as npt

from pcmlab.config import ChipLimits
from pcmlab.errors import ConfigError, LimitError

CellArray = npt.NDArray[np.uint32]

# One pulse on the wire, in both protocols' blocks: (uint32 cell, float32 amplitude µA), LE.
RECORD = np.dtype([("cell", "<u4"), ("amp", "<f4")])


def pulse_records(cells: CellArray, amplitude_ua: npt.NDArray[np.float32]) -> np.ndarray:
    """Cells and amplitudes packed as wire records."""
    records = np.empty(cells.size, dtype=RECORD)
    records["cell"] = cells
    records["amp"] = amplitude_ua
    return records


class PulseKind(str, enum.Enum):
    """SET: long pulse, slow fall, partial crystallization. RESET: short, abrupt, melt-quench."""

    SET = "SET"
    RESET = "RESET"

    @classmethod
    def parse(cls, kind: PulseKind | str) -> PulseKind:
        if isinstance(kind, PulseKind):
            return kind
        try:
            return cls(str(kind).strip().upper())
        except ValueError:
            raise ConfigError(f"pulse kind {kind!r} is not one of SET, RESET") from None


def check_cells(cells: npt.ArrayLike, n_cells: int) -> CellArray:
    """Validate flat cell indices (row * cols + col) and return them as uint32."""
    arr = np.asarray(cells)
    if arr.ndim != 1:
        raise ConfigError(f"cells must be a 1-D array of flat indices, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(
            f"cells must be integers (flat index row*cols+col), got dtype {arr.dtype}"
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_cells:
        bad = lo if lo < 0 else hi
        raise LimitError(
            f"cell index {bad} is outside the array (valid 0..{n_cells - 1}); "
            "check rows/cols of the chip"
        )
    return arr.astype(np.uint32, copy=False)


def max_amplitude_ua(kind: PulseKind, limits: ChipLimits) -> float:
    return limits.max_set_ua if kind is PulseKind.SET else limits.max_reset_ua


def check_pulses(
    cells: npt.ArrayLike,
    kind: PulseKind | str,
    amplitude_ua: npt.ArrayLike,
    width_ns: float,
    n_cells: int,
    limits: ChipLimits,
) -> tuple[PulseKind, CellArray, npt.NDArray[np.float32], float]:
    """Check a pulse batch against the chip's limits; nothing is clipped.

    Returns (kind, cells as uint32, one float32 amplitude per cell, width).
    Raises LimitError naming the offending value and the limit.
    """
    kind = PulseKind.parse(kind)
    cell_arr = check_cells(cells, n_cells)
    amp = np.asarray(amplitude_ua)
    if amp.dtype.kind not in "fiu":
        raise ConfigError(f"amplitude_ua must be numbers (µA), got dtype {amp.dtype}")
    if amp.dtype.kind != "f":
        amp = amp.astype(np.float64)
    scalar = amp.ndim == 0
    if scalar:
        amp = amp.reshape(1)  # checked once, spread over the cells at the end
    elif amp.shape != cell_arr.shape:
        raise ConfigError(
            f"amplitude_ua has {amp.size} values for {cell_arr.size} cells; "
            "give one amplitude per cell or a single scalar"
        )
    try:
        width = float(width_ns)
    except (TypeError, ValueError):
        raise ConfigError(f"width_ns must be a number, got {width_ns!r}") from None
    if math.isnan(width) or not limits.min_width_ns <= width <= limits.max_width_ns:
        raise LimitError(
            f"pulse width {width} ns is outside the chip's range "
            f"{limits.min_width_ns}..{limits.max_width_ns} ns"
        )
    if cell_arr.size:
        if np.isnan(amp).any():
            i = 0 if scalar else int(np.flatnonzero(np.isnan(amp))[0])
            raise LimitError(f"amplitude for cell {int(cell_arr[i])} is NaN")
        limit = max_amplitude_ua(kind, limits)
        lo, hi = float(amp.min()), float(amp.max())
        if lo < 0:
            i = 0 if scalar else int(np.argmin(amp))
            raise LimitError(
                f"{kind.value} amplitude {lo} µA for cell {int(cell_arr[i])} is negative; "
                "amplitudes are 0 (no effect) or positive"
            )
        if hi > limit:
            i = 0 if scalar else int(np.argmax(amp))
            raise LimitError(
                f"{kind.value} amplitude {hi} µA for cell {int(cell_arr[i])} is above the "
                f"chip's limit of {limit} µA; lower it (nothing was applied)"
            )
    if scalar:
        return kind, cell_arr, np.full(cell_arr.shape, amp[0], dtype=np.float32), width
    amp32 = amp.astype(np.float32, copy=False)
    if amp32.size and float(amp32.max()) > max_amplitude_ua(kind, limits):
        raise LimitError(f"{kind.value} amplitude rounds to {float(amp32.max())} µA in float32, "
                         f"above the chip's limit of {max_amplitude_ua(kind, limits)} µA")
    return kind, cell_arr, amp32, width
