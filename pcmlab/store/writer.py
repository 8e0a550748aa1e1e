"""Writing a measurement file: everything created up front, SWMR on, one row per readout.

Write order per readout: the conductance row, then chip and wall time, then ``time_s``
last. A row counts as complete once its ``time_s`` is written (the fill value is NaN), so
a reader, or a resume after SIGKILL, never takes a half-written row for a measurement.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from pcmlab import __version__
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.store import schema as S

log = logging.getLogger(__name__)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """The one process that writes a run's file."""

    def __init__(self, file: h5py.File, path: Path) -> None:
        self._f = file
        self.path = path
        self._readouts = file[S.READOUTS]
        self._g = self._readouts[S.CONDUCTANCE]
        self._n_rows = 0

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        config: dict[str, Any],
        driver_identity: str,
        cells: npt.ArrayLike,
        target_us: npt.ArrayLike,
        layer: npt.ArrayLike | None = None,
        overwrite: bool = False,
    ) -> RunWriter:
        """A new file with every dataset of the schema; readouts empty, programming unset."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; choose another output file (measurements are "
                              "never overwritten) or resume it with 'pcmlab resume'")
        cell_arr = np.asarray(cells, dtype=np.uint32)
        tgt = np.asarray(target_us, dtype=np.float32)
        lay = (np.full(cell_arr.shape, -1, dtype=np.int16) if layer is None
               else np.asarray(layer, dtype=np.int16))
        if cell_arr.size == 0:
            raise ConfigError("a run needs at least one cell")
        if not cell_arr.ndim == 1 or tgt.shape != cell_arr.shape or lay.shape != cell_arr.shape:
            raise ConfigError(f"cells {cell_arr.shape}, targets {tgt.shape} and layer "
                              f"{lay.shape} must be 1-D of one length")
        f = h5py.File(path, "w", libver="latest")
        try:
            cls._create_layout(f, config, driver_identity, cell_arr, tgt, lay)
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        return cls(f, path)

    @staticmethod
    def _create_layout(f: h5py.File, config: dict[str, Any], driver_identity: str,
                       cells: npt.NDArray[np.uint32], target: npt.NDArray[np.float32],
                       layer: npt.NDArray[np.int16]) -> None:
        n = cells.size
        f.attrs[S.ATTR_SCHEMA] = S.SCHEMA
        f.attrs[S.ATTR_VERSION] = __version__
        f.attrs[S.ATTR_CREATED] = utc_now_iso()
        f.attrs[S.ATTR_CONFIG] = json.dumps(config, sort_keys=True)
        f.attrs[S.ATTR_DRIVER] = driver_identity
        f.attrs[S.ATTR_INTERRUPTIONS] = "[]"
        t = f.create_group(S.TARGETS)
        t.create_dataset(S.CELL, data=cells)
        t.create_dataset(S.CONDUCTANCE, data=target)
        t.create_dataset(S.LAYER, data=layer)
        p = f.create_group(S.PROGRAMMING)
        p.create_dataset(S.CONDUCTANCE, shape=(n,), dtype="f4", fillvalue=np.nan)
        p.create_dataset(S.ITERATIONS, shape=(n,), dtype="u2")
        p.create_dataset(S.CONVERGED, shape=(n,), dtype=bool)
        p.create_dataset(S.LAST_PULSE, shape=(n,), dtype="f8", fillvalue=np.nan)
        p.attrs[S.ATTR_COMPLETE] = False
        p.attrs[S.ATTR_INTERRUPTED] = False
        p.attrs[S.ATTR_END_CHIP_TIME] = np.nan
        r = f.create_group(S.READOUTS)
        row_chunk = min(n, 1 << 28)  # one row per chunk (HDF5 caps a chunk at 4 GiB)
        time_ds = r.create_dataset(S.TIME, shape=(0,), maxshape=(None,), chunks=(4096,),
                                   dtype="f8", fillvalue=np.nan)
        r.create_dataset(S.CHIP_TIME, shape=(0,), maxshape=(None,), chunks=(4096,),
                         dtype="f8", fillvalue=np.nan)
        r.create_dataset(S.WALL_TIME, shape=(0,), maxshape=(None,), chunks=(4096,),
                         dtype="f8", fillvalue=np.nan)
        g = r.create_dataset(S.CONDUCTANCE, shape=(0, n), maxshape=(None, n),
                             chunks=(1, row_chunk), dtype="f4", fillvalue=np.nan)
        cell_ds = r.create_dataset(S.CELL, data=cells)
        r.attrs[S.ATTR_SCHEDULE] = np.zeros(0)
        r.attrs[S.ATTR_ANCHOR] = np.nan
        # dimension scales: xarray (h5netcdf engine) sees dims time_s x cell
        time_ds.make_scale(S.TIME)
        cell_ds.make_scale(S.CELL)
        g.dims[0].attach_scale(time_ds)
        g.dims[1].attach_scale(cell_ds)
        for name in (S.CHIP_TIME, S.WALL_TIME):
            r[name].dims[0].attach_scale(time_ds)
        g.attrs["units"] = "uS"
        time_ds.attrs["units"] = "s"
        time_ds.attrs["long_name"] = "time since the end of programming"

    # -- programming (before SWMR) ---------------------------------------------------------
    def write_programming(
        self, *, conductance_us: npt.ArrayLike, iterations: npt.ArrayLike,
        converged: npt.ArrayLike, last_pulse_s: npt.ArrayLike, end_chip_time_s: float,
        interrupted: bool, traces: dict[str, npt.ArrayLike] | None = None,
    ) -> None:
        if self._f.swmr_mode:
            raise ConfigError("programming results must be written before readouts start")
        p = self._f[S.PROGRAMMING]
        p[S.CONDUCTANCE][...] = np.asarray(conductance_us, dtype=np.float32)
        p[S.ITERATIONS][...] = np.asarray(iterations, dtype=np.uint16)
        p[S.CONVERGED][...] = np.asarray(converged, dtype=bool)
        p[S.LAST_PULSE][...] = np.asarray(last_pulse_s, dtype=np.float64)
        if traces:
            tg = p.create_group(S.TRACES)
            for name, arr in traces.items():
                tg.create_dataset(name, data=np.asarray(arr, dtype=np.float32))
        p.attrs[S.ATTR_END_CHIP_TIME] = float(end_chip_time_s)
        p.attrs[S.ATTR_INTERRUPTED] = bool(interrupted)
        p.attrs[S.ATTR_COMPLETE] = True
        self._f.flush()

    def record_interruption(self, entry: dict[str, Any]) -> None:
        """Add an entry to the root ``interruptions`` list (before SWMR is on)."""
        entries = json.loads(self._f.attrs.get(S.ATTR_INTERRUPTIONS, "[]"))
        entries.append(entry)
        self._f.attrs[S.ATTR_INTERRUPTIONS] = json.dumps(entries)

    # -- readouts (SWMR) -------------------------------------------------------------------
    def start_readouts(self, schedule_time_s: npt.ArrayLike, anchor_chip_time_s: float) -> None:
        """Store the planned schedule, then switch SWMR on: from here readers may follow."""
        self._readouts.attrs[S.ATTR_SCHEDULE] = np.asarray(schedule_time_s, dtype=np.float64)
        self._readouts.attrs[S.ATTR_ANCHOR] = float(anchor_chip_time_s)
        self._f.flush()
        self._f.swmr_mode = True

    @property
    def n_readouts(self) -> int:
        return self._n_rows

    def append_readout(self, time_s: float, chip_time_s: float, wall_time: float,
                       conductance_us: npt.ArrayLike) -> int:
        """Append one row and flush it; returns the row index."""
        g = np.asarray(conductance_us, dtype=np.float32)
        if g.shape != (self._g.shape[1],):
            raise ConfigError(f"a readout has {g.size} values; this run has "
                              f"{self._g.shape[1]} cells")
        i = self._n_rows
        r = self._readouts
        self._g.resize(i + 1, axis=0)
        self._g.write_direct(g.reshape(1, -1), dest_sel=np.s_[i:i + 1])
        self._g.flush()
        for name, value in ((S.CHIP_TIME, chip_time_s), (S.WALL_TIME, wall_time)):
            ds = r[name]
            ds.resize((i + 1,))
            ds[i] = value
            ds.flush()
        ds = r[S.TIME]  # last: its value marks the row complete
        ds.resize((i + 1,))
        ds[i] = time_s
        ds.flush()
        self._n_rows = i + 1
        return i

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resume ----------------------------------------------------------------------------
    @classmethod
    def resume(cls, path: str | Path, entry: dict[str, Any], *,
               schedule_time_s: npt.ArrayLike, anchor_chip_time_s: float,
               ) -> tuple[RunWriter, int]:
        """Reopen an interrupted run for appending.

        A file a killed SWMR writer left behind cannot be reopened for writing with HDF5's
        public API, so the completed part is copied into a new file beside it (``entry``
        recorded in its interruptions), which then atomically replaces the original: the
        original stays untouched until its copy is whole. Returns the writer, in SWMR mode,
        and the number of completed readouts kept.
        """
        from pcmlab.store.reader import RunReader

        path = Path(path)
        with RunReader(path) as old:
            prog = old.programming()
            if prog is None:
                raise SchemaError(f"{path}: programming never finished, so there is nothing "
                                  "to resume; start a new run")
            targets = old.targets()
            fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".resume",
                                            dir=path.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            writer = cls.create(tmp, config=old.config, driver_identity=old.driver_identity,
                                cells=targets.cell, target_us=targets.conductance_us,
                                layer=targets.layer, overwrite=True)
            try:
                f = writer._f
                f.attrs[S.ATTR_CREATED] = old.created
                f.attrs[S.ATTR_INTERRUPTIONS] = json.dumps(old.interruptions)
                for name in (S.NETWORK, S.EVALUATION):
                    if name in old.file:
                        old.file.copy(old.file[name], f, name=name)
                writer.write_programming(
                    conductance_us=prog.conductance_us, iterations=prog.iterations,
                    converged=prog.converged, last_pulse_s=prog.last_pulse_s,
                    end_chip_time_s=prog.end_chip_time_s, interrupted=prog.interrupted,
                    traces=prog.traces)
                readouts = old.readouts()
                writer.record_interruption({**entry, "completed_readouts": readouts.n})
                writer.start_readouts(schedule_time_s, anchor_chip_time_s)
                for i in range(readouts.n):
                    writer.append_readout(float(readouts.time_s[i]),
                                          float(readouts.chip_time_s[i]),
                                          float(readouts.wall_time[i]),
                                          readouts.conductance_us[i])
            except BaseException:
                writer.close()
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, path)
        writer.path = path
        log.info("resumed %s with %d completed readouts", path, readouts.n)
        return writer, readouts.n
