"""pcmlab: program, read and evaluate phase-change-memory crossbar chips."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pcmlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
