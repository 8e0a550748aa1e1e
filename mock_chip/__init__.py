"""A software PCM crossbar chip: pulse-level device physics behind the chip's wire protocols."""

from mock_chip.chip import MockChip, MockChipConfig
from mock_chip.clock import VirtualClock
from mock_chip.physics import DevicePhysics, FaultRates

__all__ = ["DevicePhysics", "FaultRates", "MockChip", "MockChipConfig", "VirtualClock"]
