"""Mock chip servers started by the tests on 127.0.0.1; they stop with the fixture."""

from collections.abc import Iterator

import pytest

from mock_chip import FaultRates, MockChip
from mock_chip.clock import RealtimeClock
from mock_chip.controller import Controller
from mock_chip.faults import TransportFaults
from mock_chip.scpi_server import ScpiServer
from mock_chip.serial_server import SerialServer


def make_controller(rows: int = 64, cols: int = 128, seed: int = 1,
                    faults: FaultRates | None = None, virtual_clock: bool = True
                    ) -> Controller:
    chip = MockChip(geometry={"rows": rows, "cols": cols}, seed=seed,
                    faults=faults or FaultRates.none(), clock=RealtimeClock())
    return Controller(chip, virtual_clock=virtual_clock)


@pytest.fixture
def scpi_server() -> Iterator[ScpiServer]:
    with ScpiServer(make_controller(), "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def serial_server() -> Iterator[SerialServer]:
    with SerialServer(make_controller()) as server:
        yield server


def faulty(rate: float, seed: int = 7) -> TransportFaults:
    return TransportFaults(drop_reply=rate, corrupt_reply=rate, drop_request=rate / 2,
                           seed=seed)
