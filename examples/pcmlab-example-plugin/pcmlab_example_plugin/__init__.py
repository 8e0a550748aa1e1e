"""An example pcmlab driver plugin: the ``examplechip://`` scheme.

A driver fulfils ``drivers.CrossbarDriver``: ``info``, ``clock``, ``apply_pulses``,
``read``, ``close``. ``drivers.DriverBase`` supplies the limit checks, the context manager
and the closed state; the driver checks every request against its limits before anything
reaches the chip (``check_pulses``, ``check_cells``), and never clips.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import numpy.typing as npt

from drivers import ChipInfo, DriverBase, DriverPlugin, TransportError
from mock_chip import FaultRates, MockChip, MockChipConfig
from pcmlab.config import ArrayGeometry
from pcmlab.pulses import PulseKind


class ExampleChipDriver(DriverBase):
    """Example Labs' PCM test chip (here: a mock chip in this process)."""

    def __init__(self, resource: str, **options: object) -> None:
        query = parse_qs(urlsplit(resource).query)
        seed = int(query.get("seed", ["0"])[0])
        self._chip = MockChip(MockChipConfig(
            geometry=ArrayGeometry(rows=128, cols=256), seed=seed, faults=FaultRates.none()))
        self._info = ChipInfo(
            identity=f"ExampleLabs,PCM-128x256,{seed},1.0",
            geometry=self._chip.config.geometry,
            g_max_us=self._chip.config.calibration.g_max_us,
            limits=self._chip.config.limits,
            virtual_clock=True)
        self._clock = self._chip.clock

    def apply_pulses(self, cells: npt.ArrayLike, kind: PulseKind | str,
                     amplitude_ua: npt.ArrayLike, width_ns: float) -> int:
        if self._closed:
            raise TransportError("examplechip: the driver is closed")
        kind_, cells_, amps, width = self.check_pulses(cells, kind, amplitude_ua, width_ns)
        return self._chip.apply_pulses(cells_, kind_, amps, width)

    def read(self, cells: npt.ArrayLike | None = None):
        if self._closed:
            raise TransportError("examplechip: the driver is closed")
        return self._chip.read(None if cells is None else self.check_cells(cells))


plugin = DriverPlugin(
    name="examplechip",
    open=ExampleChipDriver,
    schemes=("examplechip",),
    description="Example Labs' PCM test chip: examplechip://?seed=N",
)
