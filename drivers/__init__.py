"""Chip drivers: one ``CrossbarDriver`` interface, several transports."""

from drivers.base import ChipInfo, Clock, CrossbarDriver, DriverBase, WallClock
from drivers.group import ChipGroup
from drivers.mock import MockDriver
from drivers.plugins import DriverPlugin, installed_plugins, register, resolve
from pcmlab.errors import (
    ConfigError,
    DeviceError,
    LimitError,
    PcmlabError,
    SchemaError,
    TransportError,
)
from pcmlab.pulses import PulseKind


def open_driver(resource: str, **options: object) -> CrossbarDriver:
    """A driver for a resource string: a VISA resource (``TCPIP0::host::5025::SOCKET``,
    ``GPIB0::…``, ``USB0::…``) or a serial port path or pyserial URL (``/dev/ttyUSB0``,
    ``serial:/dev/pts/3``, ``socket://host:port``), ``mock://?rows=R&cols=C&seed=S``, or a
    resource an installed driver plugin handles (``drivers.plugins``). Several resources
    separated by commas open as one ``ChipGroup`` (a network larger than one chip)."""
    if "," in resource:
        parts = [r.strip() for r in resource.split(",") if r.strip()]
        opened: list[CrossbarDriver] = []
        try:
            for part in parts:
                opened.append(open_driver(part, **options))
            return ChipGroup(opened)
        except BaseException:
            for d in opened:
                d.close()
            raise
    return resolve(resource).open(resource, **options)


__all__ = [
    "ChipGroup",
    "ChipInfo",
    "Clock",
    "ConfigError",
    "CrossbarDriver",
    "DeviceError",
    "DriverBase",
    "DriverPlugin",
    "LimitError",
    "MockDriver",
    "PcmlabError",
    "PulseKind",
    "SchemaError",
    "TransportError",
    "WallClock",
    "installed_plugins",
    "open_driver",
    "register",
]
