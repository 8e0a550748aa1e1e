"""The package's exception hierarchy: one root, one class per kind of failure."""

from __future__ import annotations


class PcmlabError(Exception):
    """Root of every error pcmlab raises on purpose."""


class ConfigError(PcmlabError, ValueError):
    """A configuration or argument is outside what is allowed."""


class LimitError(ConfigError):
    """A request exceeds a hard limit of the chip (amplitude, width, cell index, ...).

    Raised before anything is sent, so the array is untouched.
    """


class CapabilityError(ConfigError):
    """The chip does not have what the request needs (e.g. in-array MVM)."""


class TransportError(PcmlabError, OSError):
    """The connection to the chip failed: timeout, closed link, corrupt frame."""


class DeviceError(PcmlabError):
    """The chip reported an error for a command."""

    def __init__(self, message: str, *, command: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.command = command
        self.code = code


class SchemaError(PcmlabError, ValueError):
    """A file is not in the expected schema (foreign, corrupt or newer)."""


class CatalogError(PcmlabError):
    """The run catalog cannot be reached, is locked, or refused a request."""


class CatalogUnavailableError(CatalogError):
    """The catalog cannot be reached or is locked now (a run goes on without it)."""


__all__ = [
    "CapabilityError",
    "CatalogError",
    "CatalogUnavailableError",
    "ConfigError",
    "DeviceError",
    "LimitError",
    "PcmlabError",
    "SchemaError",
    "TransportError",
]
