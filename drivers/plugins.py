"""Driver plugins: how ``open_driver`` finds the driver for a resource string.

A third-party package registers a ``DriverPlugin`` under the ``pcmlab.drivers`` entry-point
group (``[project.entry-points."pcmlab.drivers"]`` in its pyproject.toml; the object may be
a ``DriverPlugin`` or a callable returning one). A resource is resolved, in order:

1. by scheme: ``mychip://...`` goes to the plugin that claims ``mychip``;
2. by identity: a VISA resource whose ``*IDN?`` maker and model a plugin claims (asked only
   when some plugin claims one);
3. by the built-in drivers: ``mock://`` (the in-process mock chip), VISA resources
   (``TCPIP0::...``, ``GPIB0::...``, ``USB0::...``), serial ports and pyserial URLs.

Plugins registered from Python (``register``) come before the entry points, so a lab can
try a driver without packaging it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from urllib.parse import parse_qs, urlsplit

from drivers.base import CrossbarDriver
from pcmlab.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pcmlab.drivers"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_VISA_HEADS = ("TCPIP", "GPIB", "USB", "VXI", "ASRL")


@dataclass(frozen=True)
class DriverPlugin:
    """A driver and the resources it handles.

    ``open(resource, **options)`` returns a connected ``CrossbarDriver``. ``schemes``: URL
    schemes it takes (``"mychip"`` for ``mychip://...``). ``identities``: (maker, model
    prefix) pairs of ``*IDN?`` replies whose VISA resources it takes instead of
    ``VisaDriver``; a model prefix of ``""`` takes every model of the maker."""

    name: str
    open: Callable[..., CrossbarDriver]
    schemes: tuple[str, ...] = ()
    identities: tuple[tuple[str, str], ...] = ()
    description: str = ""
    source: str = field(default="", compare=False)  # where it came from, for listings

    def handles(self) -> str:
        parts = [f"{s}://..." for s in self.schemes]
        parts += [f"*IDN? {maker},{model or '*'}" for maker, model in self.identities]
        return ", ".join(parts)

    def claims_identity(self, identity: str) -> bool:
        fields = [f.strip() for f in identity.split(",")]
        maker, model = [*fields, "", ""][:2]
        return any(maker.lower() == m.lower() and model.lower().startswith(p.lower())
                   for m, p in self.identities)


_registered: list[DriverPlugin] = []


def register(plugin: DriverPlugin) -> None:
    """Add a plugin from Python (ahead of the installed ones)."""
    _registered[:] = [p for p in _registered if p.name != plugin.name]
    _registered.insert(0, plugin)


def unregister(name: str) -> None:
    _registered[:] = [p for p in _registered if p.name != name]


def installed_plugins() -> list[DriverPlugin]:
    """Plugins registered from Python, then those of the ``pcmlab.drivers`` entry points.
    A plugin that fails to load is logged and left out."""
    out = list(_registered)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj: Any = ep.load()
            plugin = obj() if callable(obj) and not isinstance(obj, DriverPlugin) else obj
            if not isinstance(plugin, DriverPlugin):
                raise TypeError(f"{ep.value} is a {type(plugin).__name__}, not a DriverPlugin")
        except Exception as exc:  # a broken third-party package must not break pcmlab
            log.warning("driver plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else ep.value
        out.append(DriverPlugin(plugin.name, plugin.open, plugin.schemes, plugin.identities,
                                plugin.description, source))
    return out


# -- built-ins ---------------------------------------------------------------------------
def _open_mock(resource: str, **options: object) -> CrossbarDriver:
    """``mock://?rows=R&cols=C&seed=S&faults=none``: an in-process mock chip."""
    from drivers.mock import MockDriver
    from mock_chip import FaultRates, MockChipConfig

    query = parse_qs(urlsplit(resource).query)
    known = {"rows", "cols", "seed", "faults"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ConfigError(f"{resource}: unknown option(s) {', '.join(unknown)}; a mock "
                          "resource takes mock://?rows=R&cols=C&seed=S&faults=none")
    try:
        geometry = {k: int(query[k][0]) for k in ("rows", "cols") if k in query}
        seed = int(query.get("seed", ["0"])[0])
    except ValueError:
        raise ConfigError(f"{resource}: rows, cols and seed are whole numbers") from None
    data: dict[str, object] = {"seed": seed}
    if geometry:
        data["geometry"] = {"rows": 512, "cols": 2048, **geometry}
    if query.get("faults", [""])[0] == "none":
        data["faults"] = FaultRates.none()
    try:
        config = MockChipConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"{resource}: {exc}") from None
    return MockDriver(config=config)


def _open_visa(resource: str, **options: object) -> CrossbarDriver:
    from drivers.visa import VisaDriver

    return VisaDriver(resource, **options)  # type: ignore[arg-type]


def _open_serial(resource: str, **options: object) -> CrossbarDriver:
    from drivers.serial import SerialDriver

    if resource.startswith("serial:"):
        resource = resource[len("serial:"):]
    return SerialDriver(resource, **options)  # type: ignore[arg-type]


BUILT_INS = (
    DriverPlugin("mock", _open_mock, ("mock",),
                 description="the in-process mock chip: mock://?rows=R&cols=C&seed=S",
                 source="pcmlab (built in)"),
    DriverPlugin("visa", _open_visa, description="SCPI over VISA: TCPIP0::host::port::SOCKET, "
                 "GPIB0::..., USB0::...", source="pcmlab (built in)"),
    DriverPlugin("serial", _open_serial, ("socket", "rfc2217", "loop"),
                 description="framed binary over a serial port: /dev/ttyUSB0, COM3, "
                 "serial:PATH, socket://host:port", source="pcmlab (built in)"),
)


_BUILT_IN = {p.name: p for p in BUILT_INS}


def _is_visa(resource: str) -> bool:
    return resource.split("::", 1)[0].upper().startswith(_VISA_HEADS) and "::" in resource


def _visa_identity(resource: str, timeout_s: float = 5.0) -> str:
    """``*IDN?`` of a VISA resource over a short plain session (for identity claims)."""
    import pyvisa

    rm = pyvisa.ResourceManager("@py")
    try:
        inst: Any = rm.open_resource(resource, open_timeout=int(timeout_s * 1000))
        try:
            inst.timeout = int(timeout_s * 1000)
            inst.read_termination = inst.write_termination = "\n"
            return str(inst.query("*IDN?")).strip()
        finally:
            inst.close()
    except (pyvisa.errors.Error, OSError, ValueError) as exc:
        raise TransportError(f"{resource}: could not ask its identity ({exc})") from None
    finally:
        rm.close()


def resolve(resource: str) -> DriverPlugin:
    """The plugin (or built-in) that opens ``resource``."""
    plugins = installed_plugins()
    m = _SCHEME.match(resource)
    if m:
        scheme = m.group(1).lower()
        for p in [*plugins, *BUILT_INS]:
            if scheme in (s.lower() for s in p.schemes):
                return p
        known = sorted({s for p in [*plugins, *BUILT_INS] for s in p.schemes})
        raise ConfigError(f"no driver handles '{scheme}://' resources (installed schemes: "
                          f"{', '.join(known)}); install the plugin for your chip, see "
                          "'pcmlab drivers'")
    if _is_visa(resource):
        claimers = [p for p in plugins if p.identities]
        if claimers:
            identity = _visa_identity(resource)
            for p in claimers:
                if p.claims_identity(identity):
                    log.info("%s: '%s' is claimed by driver plugin %s", resource, identity,
                             p.name)
                    return p
        return _BUILT_IN["visa"]
    if (resource.startswith(("/dev/", "serial:")) or resource.upper().startswith("COM")):
        return _BUILT_IN["serial"]
    raise ConfigError(f"resource '{resource}' is neither a VISA resource (TCPIP0::host::port::"
                      "SOCKET, GPIB0::..., USB0::...), a serial port (/dev/..., serial:PATH, "
                      "socket://host:port), mock://..., nor a scheme of an installed driver "
                      "plugin (see 'pcmlab drivers')")
