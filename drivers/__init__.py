"""Chip drivers: one ``CrossbarDriver`` interface, several transports."""

from drivers.base import ChipInfo, Clock, CrossbarDriver, DriverBase, WallClock
from drivers.group import ChipGroup
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


def open_driver(resource: str, **options: object) -> CrossbarDriver:
    """A driver for a resource string: a VISA resource (``TCPIP0::host::5025::SOCKET``,
    ``GPIB0::…``, ``USB0::…``) or a serial port path or pyserial URL (``/dev/ttyUSB0``,
    ``serial:/dev/pts/3``, ``socket://host:port``). Several resources separated by commas
    open as one ``ChipGroup`` (a network larger than one chip)."""
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
    head = resource.split("::", 1)[0].upper()
    if head.startswith(("TCPIP", "GPIB", "USB", "VXI")):
        from drivers.visa import VisaDriver

        return VisaDriver(resource, **options)  # type: ignore[arg-type]
    if resource.startswith("serial:"):
        resource = resource[len("serial:"):]
    if resource.startswith("/dev/") or "://" in resource or resource.upper().startswith("COM"):
        from drivers.serial import SerialDriver

        return SerialDriver(resource, **options)  # type: ignore[arg-type]
    raise ConfigError(f"resource '{resource}' is neither a VISA resource (TCPIP0::host::port::"
                      "SOCKET, GPIB0::..., USB0::...) nor a serial port (/dev/..., serial:PATH,"
                      " socket://host:port)")


__all__ = [
    "ChipGroup",
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
    "open_driver",
]
