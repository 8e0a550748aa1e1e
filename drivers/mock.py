"""In-process driver over a ``MockChip``: no transport, the chip's virtual clock."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from drivers.base import F32, ChipInfo, DriverBase
from mock_chip import MockChip, MockChipConfig
from pcmlab.errors import TransportError
from pcmlab.mvm import MvmRequest
from pcmlab.pulses import PulseKind


class MockDriver(DriverBase):
    """Drive a mock chip held in this process (the default for tests and the demo)."""

    def __init__(self, chip: MockChip | None = None, config: MockChipConfig | None = None
                 ) -> None:
        self.chip = chip if chip is not None else MockChip(config)
        cfg = self.chip.config
        self._info = ChipInfo(
            identity=self.chip.identity,
            geometry=cfg.geometry,
            g_max_us=cfg.calibration.g_max_us,
            limits=cfg.limits,
            virtual_clock=True,
            mvm=cfg.mvm.spec() if cfg.mvm.enabled else None,
        )
        self._clock = self.chip.clock


    def _ensure_open(self) -> None:
        if self._closed:
            raise TransportError(f"driver for {self._info.identity} is closed")

    def apply_pulses(self, cells: npt.ArrayLike, kind: PulseKind | str,
                     amplitude_ua: npt.ArrayLike, width_ns: float) -> int:
        self._ensure_open()
        scalar = np.ndim(amplitude_ua) == 0
        kind, cell_arr, amp, _ = self.check_pulses(cells, kind, amplitude_ua, width_ns)
        # checked against the chip's own limits (info is the chip's): not checked twice
        return self.chip._apply_checked(kind, cell_arr, amp[0] if scalar and amp.size else amp)

    def _mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:
        self._ensure_open()
        return self.chip.mvm(request)

    def read(self, cells: npt.ArrayLike | None = None) -> F32:
        self._ensure_open()
        if cells is None:
            return self.chip.read()
        return self.chip.read(self.check_cells(cells))
