"""Writing a measurement file: everything created up front, SWMR on at once, then the
programming results and one row per readout, each flushed as it is written.

The HDF5 file is open only while the writer writes: from creation to the end of
programming, then for each readout, reopened in SWMR write mode (readouts are seconds to
months apart). A writer killed between readouts so leaves a closed file that plain h5py
and xarray open without ``recover``. When the next planned readout is due within
``KEEP_OPEN_S`` of the last one, the file stays open for it. The writer's lock
(``pcmlab.filelock``) is held for the writer's whole life, open file or not.

SWMR goes on before anything is measured because a file a writer left open in plain mode
(killed) opens in neither mode afterwards, while a SWMR file stays readable.

Write order per readout: the conductance row, then chip and wall time, then ``time_s``
last. A row counts as complete once its ``time_s`` is written (the fill value is NaN), so
a reader, or a resume after SIGKILL, never takes a half-written row for a measurement.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import numpy.typing as npt

from pcmlab import __version__
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.filelock import hold_writer_lock, writer_alive
from pcmlab.store import schema as S

if TYPE_CHECKING:
    from pcmlab.catalog.registration import Registration

log = logging.getLogger(__name__)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def refuse_if_written(path: Path) -> None:
    """SchemaError if a live RunWriter (any process on this machine) has ``path`` open."""
    if writer_alive(path):
        raise SchemaError(f"{path}: a run is still writing this file; wait for it to end "
                          "(resume and recover are for a run that stopped)")


class RunWriter:
    """The one process that writes a run's file."""

    def __init__(self, file: h5py.File, path: Path,
                 registration: Registration | None = None) -> None:
        self._f = file
        self.path = path
        self._bind(file)
        self._schedule_s = file[S.READOUTS][S.SCHEDULE][...]
        self._programmed = False
        self._closed = False
        self._pins = 0  # readers in this process (they need the file kept open)
        self._n_rows = 0
        st = os.stat(path)
        self._key = (st.st_dev, st.st_ino)
        _WRITERS[self._key] = self
        self.run_id = str(file.attrs.get(S.ATTR_RUN_ID, ""))
        self.registration = registration
        self._interrupted = False
        self._last_update_s = time.monotonic()
        # The writer's lock for as long as this writer lives (the kernel drops it if the
        # process dies): resume and recover refuse a file whose writer is alive, and the
        # catalog tells a killed run from a running one (pcmlab.filelock).
        self._lock_fd: int | None = hold_writer_lock(path)

    def _bind(self, file: h5py.File) -> None:
        self._f = file
        self._readouts = file[S.READOUTS]
        self._g = self._readouts[S.CONDUCTANCE]

    def _file(self) -> h5py.File:
        """The file, reopened in SWMR write mode if the writer released it. HDF5's own
        file locking is off for it: a reader holding the file open (HDF5 gives it a shared
        lock) must not keep the run from writing its next readout; the writer's lock
        already keeps a second writer out."""
        if self._closed:
            raise SchemaError(f"{self.path}: the writer is closed")
        if not self._f.id.valid:
            self._bind(_open_swmr_write(self.path))
        return self._f

    def release(self) -> None:
        """Close the HDF5 file until the next write (the writer's lock stays held), so
        that a kill meanwhile leaves a file any HDF5 tool opens. Kept open while a reader
        in this process has it (HDF5 would not reopen for writing a file this process
        has open read-only)."""
        if self._f.id.valid and (self._pins == 0 or self._closed):
            self._f.close()

    def _pin(self) -> None:
        self._file()
        self._pins += 1

    def _unpin(self) -> None:
        self._pins = max(self._pins - 1, 0)

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
        schedule_time_s: npt.ArrayLike,
        layer: npt.ArrayLike | None = None,
        trace_iterations: int = 0,
        overwrite: bool = False,
        created: str | None = None,
        interruptions: list[dict[str, Any]] | None = None,
        network_mapping: str | None = None,
        geometry: dict[str, int] | None = None,
        prepare: Callable[[h5py.File], None] | None = None,
        kind: str = "run",
        run_id: str | None = None,
        register: bool = True,
    ) -> RunWriter:
        """A new file with every dataset of the schema, in SWMR mode: readouts empty,
        programming unset (NaN end time). ``trace_iterations`` > 0 reserves per-iteration
        traces of programming. ``prepare(file)`` adds objects of its own before SWMR mode
        goes on (after it, none can be added). ``kind`` (run, deployment,
        characterization) and the run's id (new unless given) go into the file; with
        ``register`` the run is registered in the catalog (``pcmlab.catalog.registration``;
        a catalog that cannot be reached leaves the registration pending in the file)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; choose another output file (measurements are "
                              "never overwritten) or resume it with 'pcmlab resume'")
        if path.exists():
            # not even --force replaces a file a live run is writing (between readouts it
            # has no HDF5 file open, so nothing else would stop the truncation)
            refuse_if_written(path)
        cell_arr = np.asarray(cells, dtype=np.uint32)
        tgt = np.asarray(target_us, dtype=np.float32)
        lay = (np.full(cell_arr.shape, -1, dtype=np.int16) if layer is None
               else np.asarray(layer, dtype=np.int16))
        if cell_arr.size == 0:
            raise ConfigError("a run needs at least one cell")
        if not cell_arr.ndim == 1 or tgt.shape != cell_arr.shape or lay.shape != cell_arr.shape:
            raise ConfigError(f"cells {cell_arr.shape}, targets {tgt.shape} and layer "
                              f"{lay.shape} must be 1-D of one length")
        run_id = run_id or _new_run_id()
        registration = None
        if register:  # before the file exists: a kill now leaves no half-made file behind
            registration = _register_start(run_id, path, kind, config, driver_identity,
                                           cell_arr, geometry, network_mapping)
        try:
            f = h5py.File(path, "w", libver="latest")
        except BaseException:
            if registration is not None:
                registration.finish("failed", hash_file=False)
            raise
        try:
            cls._create_layout(f, config, driver_identity, cell_arr, tgt, lay,
                               np.asarray(schedule_time_s, dtype=np.float64), trace_iterations)
            f.attrs[S.ATTR_CREATED] = created or utc_now_iso()
            f.attrs[S.ATTR_INTERRUPTIONS] = json.dumps(interruptions or [])
            f.attrs[S.ATTR_KIND] = kind
            f.attrs[S.ATTR_RUN_ID] = run_id
            if geometry is not None:
                f.attrs[S.ATTR_GEOMETRY] = json.dumps(geometry, sort_keys=True)
            if network_mapping is not None:
                f.create_group(S.NETWORK).attrs[S.ATTR_MAPPING] = network_mapping
            if prepare is not None:
                prepare(f)
            if registration is not None and registration.pending is not None:
                f.attrs[S.ATTR_CATALOG_PENDING] = registration.pending_record()
            f.swmr_mode = True  # flushes everything above first
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            if registration is not None:
                registration.finish("failed", hash_file=False)
            raise
        return cls(f, path, registration)

    @staticmethod
    def _create_layout(f: h5py.File, config: dict[str, Any], driver_identity: str,
                       cells: npt.NDArray[np.uint32], target: npt.NDArray[np.float32],
                       layer: npt.NDArray[np.int16], schedule: npt.NDArray[np.float64],
                       trace_iterations: int) -> None:
        n = cells.size
        f.attrs[S.ATTR_SCHEMA] = S.SCHEMA
        f.attrs[S.ATTR_VERSION] = __version__
        f.attrs[S.ATTR_CONFIG] = json.dumps(config, sort_keys=True)
        f.attrs[S.ATTR_DRIVER] = driver_identity
        t = f.create_group(S.TARGETS)
        t.create_dataset(S.CELL, data=cells)
        t.create_dataset(S.CONDUCTANCE, data=target)
        t.create_dataset(S.LAYER, data=layer)
        # Storage is written now, before SWMR: a SWMR writer may overwrite data in place,
        # but allocating a dataset's storage later corrupts the file for readers.
        p = f.create_group(S.PROGRAMMING)
        p.create_dataset(S.CONDUCTANCE, data=np.full(n, np.nan, dtype=np.float32))
        p.create_dataset(S.ITERATIONS, data=np.zeros(n, dtype=np.uint16))
        p.create_dataset(S.CONVERGED, data=np.zeros(n, dtype=bool))
        p.create_dataset(S.LAST_PULSE, data=np.full(n, np.nan))
        p.create_dataset(S.END_CHIP_TIME, data=np.float64(np.nan))
        p.create_dataset(S.INTERRUPTED, data=np.False_)
        p.create_dataset(S.SET_PULSES, data=np.zeros(n, dtype=np.uint32))
        p.create_dataset(S.RESET_PULSES, data=np.zeros(n, dtype=np.uint32))
        if trace_iterations > 0:
            tg = p.create_group(S.TRACES)
            for name in (S.CONDUCTANCE, "amplitude_ua"):
                tg.create_dataset(name, data=np.full((trace_iterations, n), np.nan, "f4"))
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
        schedule_ds = r.create_dataset(S.SCHEDULE, data=schedule)
        # dimension scales: xarray (h5netcdf engine) sees dims time_s x cell, and the
        # planned times on a dimension of their own (not a phony one)
        schedule_ds.make_scale(S.SCHEDULE)
        time_ds.make_scale(S.TIME)
        cell_ds.make_scale(S.CELL)
        g.dims[0].attach_scale(time_ds)
        g.dims[1].attach_scale(cell_ds)
        for name in (S.CHIP_TIME, S.WALL_TIME):
            r[name].dims[0].attach_scale(time_ds)
        g.attrs["units"] = "uS"
        time_ds.attrs["units"] = "s"
        time_ds.attrs["long_name"] = "time since the end of programming"

    # -- programming -----------------------------------------------------------------------
    def update_targets(self, target_us: npt.ArrayLike) -> None:
        """Replace the targets by the ones finally programmed (same cells, e.g. after pair
        compensation); before the programming results are written."""
        ds = self._file()[S.TARGETS][S.CONDUCTANCE]
        ds[...] = np.asarray(target_us, dtype=np.float32)
        ds.flush()

    def record_pulses(self, set_pulses: npt.ArrayLike, reset_pulses: npt.ArrayLike) -> None:
        """The SET and RESET pulses each cell has received so far, while programming goes
        on (one flush): a run killed mid-programming still tells its cells' endurance."""
        p = self._file()[S.PROGRAMMING]
        p[S.SET_PULSES][...] = np.asarray(set_pulses, dtype=np.uint32)
        p[S.RESET_PULSES][...] = np.asarray(reset_pulses, dtype=np.uint32)
        self._f.flush()

    def write_programming(
        self, *, conductance_us: npt.ArrayLike, iterations: npt.ArrayLike,
        converged: npt.ArrayLike, last_pulse_s: npt.ArrayLike, end_chip_time_s: float,
        interrupted: bool, traces: dict[str, npt.ArrayLike] | None = None,
        set_pulses: npt.ArrayLike | None = None, reset_pulses: npt.ArrayLike | None = None,
    ) -> None:
        """Store the programming results; the end time, written last, marks them complete.
        ``set_pulses`` / ``reset_pulses``: the pulses each cell received (a cell's
        endurance, summed across runs by ``pcmlab history``)."""
        p = self._file()[S.PROGRAMMING]
        pulses = [(name, value, np.uint32) for name, value in
                  ((S.SET_PULSES, set_pulses), (S.RESET_PULSES, reset_pulses))
                  if value is not None and name in p]
        for name, value, dtype in ((S.CONDUCTANCE, conductance_us, np.float32),
                                   (S.ITERATIONS, iterations, np.uint16),
                                   (S.CONVERGED, converged, np.bool_),
                                   (S.LAST_PULSE, last_pulse_s, np.float64), *pulses):
            p[name][...] = np.asarray(value, dtype=dtype)
            p[name].flush()
        if traces:
            if S.TRACES not in p:
                raise ConfigError("traces were not reserved when the file was created "
                                  "(trace_iterations)")
            for name, arr in traces.items():
                arr = np.asarray(arr, dtype=np.float32)
                ds = p[S.TRACES][name]
                ds[: arr.shape[0]] = arr
                ds.flush()
        p[S.INTERRUPTED][()] = bool(interrupted)
        p[S.INTERRUPTED].flush()
        p[S.END_CHIP_TIME][()] = float(end_chip_time_s)
        p[S.END_CHIP_TIME].flush()
        self._interrupted = bool(interrupted)
        self._programmed = not np.isnan(float(end_chip_time_s))
        cells = self._f[S.TARGETS][S.CELL][:]
        if self._schedule_s.size == 0 or self._schedule_s[0] >= KEEP_OPEN_S:
            self.release()  # the first readout is a while away
        if self.registration is not None:
            from pcmlab.catalog.records import cell_ranges

            self.registration.update(cells=cell_ranges(
                cells, "programmed", n_set=set_pulses, n_reset=reset_pulses))

    # -- readouts --------------------------------------------------------------------------
    @property
    def n_readouts(self) -> int:
        return self._n_rows

    def append_readout(self, time_s: float, chip_time_s: float, wall_time: float,
                       conductance_us: npt.ArrayLike, *, keep_open: bool | None = None) -> int:
        """Append one row and flush it; returns the row index. The file is then closed
        until the next write unless ``keep_open`` (default: the next planned readout is due
        within ``KEEP_OPEN_S`` of this one)."""
        g = np.asarray(conductance_us, dtype=np.float32)
        self._file()
        if g.shape != (self._g.shape[1],):
            raise ConfigError(f"a readout has {g.size} values; this run has "
                              f"{self._g.shape[1]} cells")
        i = self._n_rows
        r = self._readouts
        times = [r[S.TIME], r[S.CHIP_TIME], r[S.WALL_TIME]]
        # every dataset grows by the row first (time_s NaN: "being written"), in one
        # flush, so a reader never sees the conductances a row ahead of the times
        for ds in times:
            ds.resize((i + 1,))
        self._g.resize(i + 1, axis=0)
        self._f.flush()
        self._g.write_direct(g.reshape(1, -1), dest_sel=np.s_[i:i + 1])
        times[1][i] = chip_time_s
        times[2][i] = wall_time
        self._f.flush()
        times[0][i] = time_s  # last: its value marks the row complete
        times[0].flush()
        self._n_rows = i + 1
        if keep_open is None:
            keep_open = (i + 1 < self._schedule_s.size
                         and float(self._schedule_s[i + 1]) - time_s < KEEP_OPEN_S)
        if not keep_open:
            self.release()
        if self.registration is not None and (
                time.monotonic() - self._last_update_s > READOUT_UPDATE_S):
            self._last_update_s = time.monotonic()
            self.registration.update(n_readouts=self._n_rows)
        return i

    def status(self, error: BaseException | None = None) -> str:
        """How the run ends: finished (every planned readout), stopped (Ctrl-C or
        programming interrupted, or fewer readouts), failed (an error ended it)."""
        if error is not None and not isinstance(error, KeyboardInterrupt):
            return "failed"
        planned = self._schedule_s.size
        if (error is not None or self._interrupted or not self._programmed
                or self._n_rows < planned):
            return "stopped"
        return "finished"

    def close(self, error: BaseException | None = None) -> None:
        status = None if self._closed else self.status(error)
        self._closed = True
        self.release()
        if _WRITERS.get(self._key) is self:
            del _WRITERS[self._key]
        try:  # the lock is held until the catalog knows how it ended (its hash takes time:
            # without the lock the run would show as killed meanwhile)
            if self.registration is not None and status is not None:
                self.finish_registration(status)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    def finish_registration(self, status: str) -> None:
        """Tell the catalog how the run ended (after the file is closed: its hash); if the
        catalog is unavailable, the file records the registration as pending."""
        reg = self.registration
        if reg is None:
            return
        if not reg.finish(status, n_readouts=self._n_rows):
            with h5py.File(self.path, "a") as f:
                f.attrs[S.ATTR_CATALOG_PENDING] = reg.pending_record()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(exc)

    # -- resume and recover ----------------------------------------------------------------
    @classmethod
    def resume(cls, path: str | Path, entry: dict[str, Any]) -> tuple[RunWriter, int]:
        """Reopen an interrupted run for appending.

        A file a killed SWMR writer left behind cannot be reopened for writing with HDF5's
        public API, so the completed part is copied into a new file beside it (``entry``
        added to its interruptions), which then atomically replaces the original: the
        original stays untouched until its copy is whole. Returns the writer and the
        number of completed readouts kept.
        """
        return cls._rewrite(Path(path), entry, resuming=True)

    @classmethod
    def recover(cls, path: str | Path) -> int | None:
        """Close the file of a writer that was killed, so that any HDF5 tool opens it.

        HDF5 marks a file open for (SWMR) writing; a writer that dies leaves the mark, and
        plain ``h5py.File(path, "r")``, h5netcdf and xarray refuse the file. The file is
        rewritten as ``resume`` does, bit for bit: the targets, programming, every complete
        readout (a row whose ``time_s`` was written) and any other group; a row still being
        written is left out, as every reader leaves it out. The interruption is recorded.
        The run can still be resumed afterwards. Returns the readouts kept, or None if the
        file was closed already (then it is not touched).
        """
        path = Path(path)
        from pcmlab.store.reader import opens_closed

        refuse_if_written(path)  # a live writer's file is closed between its readouts
        if opens_closed(path):
            return None
        entry = {"recovered_at": utc_now_iso(),
                 "reason": "the writer stopped without closing the file; closed by "
                           "'pcmlab recover'"}
        writer, n = cls._rewrite(path, entry, resuming=False)
        writer.close()
        writer.finish_registration("recovered")
        return n

    @classmethod
    def _rewrite(cls, path: Path, entry: dict[str, Any], *,
                 resuming: bool) -> tuple[RunWriter, int]:
        from pcmlab.store.reader import RunReader

        refuse_if_written(path)
        # the copy of a resume that was killed while copying: only ever ours, never whole
        for stale in path.parent.glob(f"{glob.escape(path.name)}.*.resume"):
            log.warning("removing %s, left by a resume that did not finish", stale)
            stale.unlink(missing_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
        with RunReader(path) as old:
            prog = old.programming()
            if prog is None and resuming:
                raise SchemaError(f"{path}: programming never finished, so there is nothing "
                                  "to resume; start a new run")
            targets = old.targets()
            readouts = old.readouts()
            kind, run_id = old.kind, old.run_id
            n_interruptions = len(old.interruptions) + 1
            trace_iterations = (next(iter(prog.traces.values())).shape[0]
                                if prog is not None and prog.traces else 0)
            fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".resume",
                                            dir=path.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            # other groups (e.g. an evaluation) and attributes are copied before SWMR goes
            # on, so the writer handed back stays open; a resume leaves out the evaluation
            # of the readouts taken so far (derived, and partial: it is made again when
            # the schedule is complete, protocols.deploy.resume_deployment)
            extra = [name for name in old.file if name not in S.GROUPS
                     and not (resuming and name == S.EVALUATION)]
            if resuming and S.EVALUATION in old.file:
                log.info("%s: the evaluation of the first %d readouts is left out; it is "
                         "made again over every readout", path, readouts.n)

            def prepare(new: h5py.File) -> None:
                for name in extra:
                    old.file.copy(old.file[name], new, name)
                for key, value in old.file.attrs.items():
                    if key not in new.attrs:
                        new.attrs[key] = value

            try:
                writer = cls.create(
                    tmp, config=old.config, driver_identity=old.driver_identity,
                    cells=targets.cell, target_us=targets.conductance_us, layer=targets.layer,
                    schedule_time_s=old.schedule_time_s, trace_iterations=trace_iterations,
                    overwrite=True, created=old.created,
                    interruptions=[*old.interruptions,
                                   {**entry, "completed_readouts": readouts.n}],
                    network_mapping=old.network_mapping_json, geometry=old.geometry,
                    prepare=prepare, kind=kind, run_id=run_id, register=False)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            try:
                if prog is not None:
                    writer.write_programming(
                        conductance_us=prog.conductance_us, iterations=prog.iterations,
                        converged=prog.converged, last_pulse_s=prog.last_pulse_s,
                        end_chip_time_s=prog.end_chip_time_s, interrupted=prog.interrupted,
                        traces=prog.traces, set_pulses=prog.set_pulses,
                        reset_pulses=prog.reset_pulses)
                for i in range(readouts.n):
                    writer.append_readout(float(readouts.time_s[i]),
                                          float(readouts.chip_time_s[i]),
                                          float(readouts.wall_time[i]),
                                          readouts.conductance_us[i], keep_open=True)
                writer.release()  # before the file takes the original's place
            except BaseException:
                writer.close()
                tmp.unlink(missing_ok=True)
                raise
        if mode is not None:
            os.chmod(tmp, mode)  # the file keeps its permission bits (mkstemp made 0600)
        os.replace(tmp, path)
        writer.path = path
        log.info("rewrote %s with %d completed readouts", path, readouts.n)
        from pcmlab.catalog.registration import Registration

        # the same run, on: resumed while it is written again, recovered when only closed
        writer.registration = Registration(writer.run_id, kind, path.absolute())
        fields: dict[str, Any] = {"meta": {"interruptions": n_interruptions}}
        if resuming:
            fields.update(status="resumed", pid=os.getpid(), n_readouts=readouts.n)
        writer.registration.update(**fields)
        return writer, readouts.n


READOUT_UPDATE_S = 10.0  # the catalog's readout count follows a run at most this often
# the file stays open for a readout due within this many seconds (on the chip's clock) of
# the last one; further apart, it is closed between them
KEEP_OPEN_S = 1.0


_WRITERS: dict[tuple[int, int], RunWriter] = {}  # live writers of this process, by file


def pin_for_reader(path: Path) -> Callable[[], None] | None:
    """If a live RunWriter of this process writes ``path``: its file opened and kept open
    for a reader, and the function that lets it go again; else None."""
    st = path.stat()
    writer = _WRITERS.get((st.st_dev, st.st_ino))
    if writer is None or writer._closed:
        return None
    writer._pin()
    return writer._unpin


def _open_swmr_write(path: Path) -> h5py.File:
    """The file reopened straight in SWMR write mode (h5py's ``File`` opens for writing
    without SWMR first, a moment a live reader should not see), HDF5 locking off."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, True)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE,
                        fapl=fapl)
    return h5py.File(fid)


def _new_run_id() -> str:
    from pcmlab.catalog.records import new_run_id

    return new_run_id()


def _register_start(run_id: str, path: Path, kind: str, config: dict[str, Any],
                    driver_identity: str, cells: npt.NDArray[np.uint32],
                    geometry: dict[str, int] | None,
                    network_mapping: str | None) -> Registration:
    """Register a run file about to be created (``pending`` says if the catalog did not
    take it: the file then records it), with the cells it is to program (pulse counts
    come when programming ends; until then, and after a kill, from the file)."""
    from pcmlab.catalog.records import cell_ranges
    from pcmlab.catalog.registration import Registration

    fingerprint = json.loads(network_mapping).get("fingerprint") if network_mapping else None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    meta = {k: config[k] for k in ("part", "parts") if k in config}
    reg = Registration.start(
        kind, path, run_id=run_id, chip_identity=driver_identity,
        cells=cell_ranges(cells, "programmed"),
        driver=driver_identity, resource=config.get("resource"), geometry=geometry,
        config=config, n_cells=int(cells.size), n_readouts=0, network_fingerprint=fingerprint,
        data_hash=data.get("sha256"), meta=meta)
    return reg
