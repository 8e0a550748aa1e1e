"""The HDF5 measurement store (schema ``pcmlab/1``)."""

from pcmlab.store.reader import Programming, Readouts, RunReader, Targets
from pcmlab.store.schema import SCHEMA
from pcmlab.store.writer import RunWriter

__all__ = ["SCHEMA", "Programming", "Readouts", "RunReader", "RunWriter", "Targets"]
