"""Chip drivers: one ``CrossbarDriver`` interface, several transports."""

from drivers.base import ChipInfo, Clock, CrossbarDriver, DriverBase, WallClock
from drivers.mock import MockDriver
from pcmlab.errors import (
    ConfigError,
    DeviceError,
    LimitError,
    PcmlabError,
    SchemaError,
    TransportError,
)
from pcmlab.pulses import PulseKind

__all__ = [
    "ChipInfo",
    "Clock",
    "ConfigError",
    "CrossbarDriver",
    "DeviceError",
    "DriverBase",
    "LimitError",
    "MockDriver",
    "PcmlabError",
    "PulseKind",
    "SchemaError",
    "TransportError",
    "WallClock",
]
