"""Reading a measurement file: validation, typed access, live (SWMR) following.

The xarray view of a run (``pcmlab.open_run``) lives above the store, in
``pcmlab/dataset.py``; the store knows nothing of it."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from pcmlab.errors import SchemaError
from pcmlab.store import schema as S

log = logging.getLogger(__name__)

REQUIRED = (
    f"{S.TARGETS}/{S.CELL}", f"{S.TARGETS}/{S.CONDUCTANCE}", f"{S.TARGETS}/{S.LAYER}",
    f"{S.PROGRAMMING}/{S.CONDUCTANCE}", f"{S.PROGRAMMING}/{S.ITERATIONS}",
    f"{S.PROGRAMMING}/{S.CONVERGED}", f"{S.PROGRAMMING}/{S.LAST_PULSE}",
    f"{S.PROGRAMMING}/{S.END_CHIP_TIME}", f"{S.PROGRAMMING}/{S.INTERRUPTED}",
    f"{S.READOUTS}/{S.SCHEDULE}",
    f"{S.READOUTS}/{S.TIME}", f"{S.READOUTS}/{S.CHIP_TIME}", f"{S.READOUTS}/{S.WALL_TIME}",
    f"{S.READOUTS}/{S.CONDUCTANCE}",
)


@dataclass(frozen=True)
class Targets:
    cell: npt.NDArray[np.uint32]
    conductance_us: npt.NDArray[np.float32]
    layer: npt.NDArray[np.int16]


@dataclass(frozen=True)
class Programming:
    conductance_us: npt.NDArray[np.float32]
    iterations: npt.NDArray[np.uint16]
    converged: npt.NDArray[np.bool_]
    last_pulse_s: npt.NDArray[np.float64]
    end_chip_time_s: float
    interrupted: bool
    traces: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    # pulses each cell received; None in files written before pcmlab recorded them
    set_pulses: npt.NDArray[np.uint32] | None = None
    reset_pulses: npt.NDArray[np.uint32] | None = None


@dataclass(frozen=True)
class Readouts:
    """Completed readouts only: T rows of N cells."""

    time_s: npt.NDArray[np.float64]
    chip_time_s: npt.NDArray[np.float64]
    wall_time: npt.NDArray[np.float64]
    conductance_us: npt.NDArray[np.float32]

    @property
    def n(self) -> int:
        return int(self.time_s.size)


def _check_hdf5(path: Path) -> None:
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    if path.is_dir():
        raise SchemaError(f"{path}: is a folder, not a measurement file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise SchemaError(f"{path}: not an HDF5 file (expected a pcmlab measurement file)")


def _open_plain(path: Path, locking: bool = True) -> h5py.File | None:
    """The file opened as any HDF5 tool opens it, or None if HDF5 marks it open for
    writing (a live writer, or a killed one: then ``pcmlab recover`` closes it)."""
    try:
        return h5py.File(path, "r") if locking else h5py.File(path, "r", locking=False)
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise SchemaError(f"{path}: HDF5 file cannot be opened, corrupt or truncated "
                              f"({exc})") from None
    return None


def opens_closed(path: str | Path) -> bool:
    """Whether plain h5py (and so h5netcdf and xarray) opens the file: False while a writer
    has it open, or after a writer was killed."""
    path = Path(path)
    _check_hdf5(path)
    f = _open_plain(path)
    if f is None:
        return False
    f.close()
    return True


class _SwmrFiles:
    """The files this process reads in SWMR mode, each opened once and shared by every
    reader of it, with one handle per dataset.

    HDF5 refreshes (``H5Drefresh``) one dataset handle; any other handle of the same
    dataset open in the process then reads wrong values (zeros) without an error. A
    dataset handle also dies with the ``h5py.File`` it was opened through. So readers of
    one SWMR file (a notebook's lazy ``open_run`` datasets, ``pcmlab inspect`` in the same
    process, ...) share the file, counted, and its dataset handles, and only those are
    refreshed."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[tuple[int, int], tuple[h5py.File, int, dict[str, h5py.Dataset]]] = {}

    def acquire(self, path: Path) -> tuple[tuple[int, int] | None, h5py.File | None]:
        """(key, file) of the file at ``path`` if this process reads it in SWMR mode
        already (one more reader), else (None, None)."""
        st = path.stat()
        key = (st.st_dev, st.st_ino)
        with self._lock:
            entry = self._files.get(key)
            if entry is None or not entry[0].id.valid:
                return None, None
            self._files[key] = (entry[0], entry[1] + 1, entry[2])
            return key, entry[0]

    def add(self, path: Path, f: h5py.File) -> tuple[int, int]:
        st = path.stat()
        key = (st.st_dev, st.st_ino)
        with self._lock:
            self._files[key] = (f, 1, {})
        return key

    def dataset(self, key: tuple[int, int], name: str) -> h5py.Dataset:
        with self._lock:
            f, _, handles = self._files[key]
            ds = handles.get(name)
            if ds is None or not ds.id.valid:
                ds = handles[name] = f[name]
            return ds

    def release(self, key: tuple[int, int]) -> None:
        with self._lock:
            f, count, handles = self._files[key]
            if count > 1:
                self._files[key] = (f, count - 1, handles)
                return
            del self._files[key]
            if f.id.valid:
                f.close()


_SWMR = _SwmrFiles()


def _open(path: Path, locking: bool = True) -> tuple[h5py.File, tuple[int, int] | None]:
    """The file, and its key among the shared SWMR files (None: opened plainly).
    ``locking=False``: take no HDF5 file lock (a reader that must never keep a writer
    from opening the file)."""
    _check_hdf5(path)
    key, f = _SWMR.acquire(path)
    if f is not None:
        return f, key
    # A live writer's file is read in SWMR mode, which follows it (between readouts the
    # writer has it closed: a plain open would succeed and see no more rows). Otherwise a
    # plain open first: it checks the file against truncation. A file a killed writer left
    # open refuses it and is read in SWMR mode.
    from pcmlab.filelock import writer_alive

    f = None if writer_alive(path) else _open_plain(path, locking)
    if f is not None:
        return f, None
    try:
        f = (h5py.File(path, "r", swmr=True) if locking else
             h5py.File(path, "r", swmr=True, locking=False))
    except OSError as exc:
        raise SchemaError(f"{path}: HDF5 file cannot be opened, corrupt or truncated "
                          f"({exc})") from None
    return f, _SWMR.add(path, f)


_LOCKING = contextvars.ContextVar("pcmlab_hdf5_locking", default=True)


@contextmanager
def reading_without_locks() -> Iterator[None]:
    """Every ``RunReader`` opened inside (in this thread, or this asyncio task) that is
    not told otherwise takes no HDF5 file lock: for a reader that must never keep a writer,
    ``resume`` or ``recover`` from opening the file, whichever code opens it (the
    dashboard around ``cell_history``)."""
    token = _LOCKING.set(False)
    try:
        yield
    finally:
        _LOCKING.reset(token)


class RunReader:
    """Read-only view of a run; safe to use while the run is still being written.
    ``locking``: whether to take HDF5's file lock (default: yes, unless opened inside
    ``reading_without_locks()``)."""

    def __init__(self, path: str | Path, *, locking: bool | None = None) -> None:
        self.path = Path(path)
        if locking is None:
            locking = _LOCKING.get()
        _check_hdf5(self.path)
        from pcmlab.store.writer import pin_for_reader

        # a writer in this process keeps its file open while this reader has it
        self._unpin = pin_for_reader(self.path)
        try:
            # (HDF5 refuses a second open with other locking flags than the writer's)
            self.file, self._swmr_key = _open(self.path, locking and self._unpin is None)
        except BaseException:
            self._release_writer()
            raise
        try:
            self._validate()
            if self._swmr_key is not None:
                self.refresh()  # another reader in this process may have opened it earlier
        except BaseException:
            self.close()
            raise

    def _dataset(self, name: str) -> h5py.Dataset:
        """A dataset of the file: for a SWMR file, the process's one handle of it."""
        if self._swmr_key is None:
            return self.file[name]
        return _SWMR.dataset(self._swmr_key, name)

    def _validate(self) -> None:
        f = self.file
        try:
            schema = f.attrs.get(S.ATTR_SCHEMA)
        except OSError as exc:
            raise SchemaError(f"{self.path}: corrupt file ({exc})") from None
        if schema is None:
            raise SchemaError(f"{self.path}: not a pcmlab measurement file (no 'schema' "
                              "attribute at the root)")
        if isinstance(schema, bytes):
            schema = schema.decode()
        family, _, version = str(schema).partition("/")
        if family != S.SCHEMA_FAMILY:
            raise SchemaError(f"{self.path}: schema '{schema}' is not a pcmlab schema "
                              f"(expected {S.SCHEMA})")
        if version != S.SCHEMA_VERSION:
            newer = version.isdigit() and int(version) > int(S.SCHEMA_VERSION)
            hint = ("written by a newer pcmlab: upgrade pcmlab to read it" if newer
                    else "not a schema this pcmlab reads")
            raise SchemaError(f"{self.path}: schema '{schema}' is {hint} (reads {S.SCHEMA})")
        for name in REQUIRED:
            try:
                present = name in f
            except (OSError, RuntimeError):
                present = False
            if not present:
                raise SchemaError(f"{self.path}: missing /{name}; the file is incomplete or "
                                  "not written by pcmlab")

    # -- metadata --------------------------------------------------------------------------
    def _attr(self, name: str, default: Any = None) -> Any:
        value = self.file.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self._attr(S.ATTR_CONFIG, "{}"))

    @property
    def geometry(self) -> dict[str, int] | None:
        """The chip's array: {"rows", "cols", "arrays"} (cell = row * cols + col), or None
        for a file from before pcmlab recorded it (then a mock chip's configuration)."""
        text = self._attr(S.ATTR_GEOMETRY)
        if text is not None:
            return json.loads(text)
        chip = self.config.get("chip", {}).get("geometry")
        return None if chip is None else {"rows": chip["rows"], "cols": chip["cols"],
                                          "arrays": 1}

    @property
    def run_id(self) -> str | None:
        """The run's globally unique id (None in files from before the catalog)."""
        value = self._attr(S.ATTR_RUN_ID)
        return None if value is None else str(value)

    @property
    def kind(self) -> str:
        """run, deployment or characterization (older files: from their configuration)."""
        value = self._attr(S.ATTR_KIND)
        if value is not None:
            return str(value)
        config = self.config
        if "deploy" in config:
            return "deployment"
        return "characterization" if "characterize" in config else "run"

    @property
    def catalog_pending(self) -> dict[str, Any] | None:
        """The registration the catalog did not receive while the run was written."""
        value = self._attr(S.ATTR_CATALOG_PENDING)
        return None if value is None else json.loads(value)

    @property
    def driver_identity(self) -> str:
        return str(self._attr(S.ATTR_DRIVER, ""))

    @property
    def created(self) -> str:
        return str(self._attr(S.ATTR_CREATED, ""))

    @property
    def pcmlab_version(self) -> str:
        return str(self._attr(S.ATTR_VERSION, ""))

    @property
    def interruptions(self) -> list[dict[str, Any]]:
        return json.loads(self._attr(S.ATTR_INTERRUPTIONS, "[]"))

    @property
    def schedule_time_s(self) -> npt.NDArray[np.float64]:
        """Planned readout times, s after the end of programming."""
        return self._read(f"{S.READOUTS}/{S.SCHEDULE}")

    @property
    def network_mapping_json(self) -> str | None:
        """The network mapping (JSON) if the run deployed a network."""
        if S.NETWORK not in self.file:
            return None
        value = self.file[S.NETWORK].attrs.get(S.ATTR_MAPPING)
        return value.decode() if isinstance(value, bytes) else value

    def evaluation(self) -> dict[str, Any] | None:
        """Accuracy vs time stored after the run, or None."""
        if S.EVALUATION not in self.file:
            return None
        g = self.file[S.EVALUATION]
        out: dict[str, Any] = {k: g[k][...] for k in g}
        out.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()})
        return out

    # -- data ------------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        try:
            return self._dataset(name)[...]
        except (OSError, KeyError) as exc:
            raise SchemaError(f"{self.path}: cannot read /{name}, the file is corrupt or "
                              f"truncated ({exc})") from None

    def targets(self) -> Targets:
        return Targets(cell=self._read(f"{S.TARGETS}/{S.CELL}").astype(np.uint32),
                       conductance_us=self._read(f"{S.TARGETS}/{S.CONDUCTANCE}"),
                       layer=self._read(f"{S.TARGETS}/{S.LAYER}"))

    def programming(self) -> Programming | None:
        """The programming results, or None if programming never finished."""
        self.refresh()
        end_s = float(self._read(f"{S.PROGRAMMING}/{S.END_CHIP_TIME}"))
        if np.isnan(end_s):
            return None
        traces = {}
        if f"{S.PROGRAMMING}/{S.TRACES}" in self.file:
            traces = {k: self._read(f"{S.PROGRAMMING}/{S.TRACES}/{k}")
                      for k in self.file[S.PROGRAMMING][S.TRACES]}
        return Programming(
            conductance_us=self._read(f"{S.PROGRAMMING}/{S.CONDUCTANCE}"),
            iterations=self._read(f"{S.PROGRAMMING}/{S.ITERATIONS}"),
            converged=self._read(f"{S.PROGRAMMING}/{S.CONVERGED}").astype(bool),
            last_pulse_s=self._read(f"{S.PROGRAMMING}/{S.LAST_PULSE}"),
            end_chip_time_s=end_s,
            interrupted=bool(self._read(f"{S.PROGRAMMING}/{S.INTERRUPTED}")),
            traces=traces,
            set_pulses=self._optional(f"{S.PROGRAMMING}/{S.SET_PULSES}"),
            reset_pulses=self._optional(f"{S.PROGRAMMING}/{S.RESET_PULSES}"),
        )

    def pulse_counts(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]] | None:
        """(SET, RESET) pulses each cell has received, as far as programming got: the
        writer records them after every pulse call, so a run killed mid-programming has
        them too. None in files from before they were recorded."""
        self.refresh()
        set_pulses = self._optional(f"{S.PROGRAMMING}/{S.SET_PULSES}")
        reset_pulses = self._optional(f"{S.PROGRAMMING}/{S.RESET_PULSES}")
        if set_pulses is None or reset_pulses is None:
            return None
        return set_pulses, reset_pulses

    def _optional(self, name: str) -> Any:
        return self._read(name) if name in self.file else None

    def refresh(self) -> None:
        """See what a live writer wrote since the last look (SWMR)."""
        if not self.file.swmr_mode:
            return
        names = [f"{S.READOUTS}/{n}" for n in (S.TIME, S.CHIP_TIME, S.WALL_TIME, S.CONDUCTANCE)]
        names += [f"{S.PROGRAMMING}/{n}" for n in (S.CONDUCTANCE, S.ITERATIONS, S.CONVERGED,
                                                  S.LAST_PULSE, S.INTERRUPTED, S.END_CHIP_TIME,
                                                  S.SET_PULSES, S.RESET_PULSES)
                  if n in self.file[S.PROGRAMMING]]
        try:
            for name in names:
                self._dataset(name).refresh()
        except (OSError, KeyError) as exc:
            raise SchemaError(f"{self.path}: cannot read /{name}, the file is corrupt or "
                              f"truncated ({exc})") from None

    @property
    def n_readouts(self) -> int:
        """Completed rows: time_s written (it is written last) and the row present."""
        r = f"{S.READOUTS}/"
        t = self._dataset(r + S.TIME)[...]
        done = np.isfinite(t)
        n = int(np.argmin(done)) if not done.all() else t.size
        return min(n, *(self._dataset(r + name).shape[0]
                        for name in (S.CONDUCTANCE, S.CHIP_TIME, S.WALL_TIME)))

    def readouts(self, start: int = 0, stop: int | None = None) -> Readouts:
        """Completed readouts ``start`` to ``stop`` (default: all of them), read into
        memory."""
        n = self.n_readouts
        sel = slice(*slice(start, stop).indices(n)[:2])
        try:
            g = self.conductance_rows()[sel]
        except OSError as exc:
            raise SchemaError(f"{self.path}: readouts are corrupt ({exc})") from None
        return Readouts(**self._times(sel), conductance_us=g)

    def readout_times(self) -> dict[str, npt.NDArray[np.float64]]:
        """``time_s``, ``chip_time_s`` and ``wall_time`` of every completed readout."""
        return self._times(slice(0, self.n_readouts))

    def conductance_rows(self) -> h5py.Dataset:
        """``/readouts/conductance_us`` itself (readout x cell, float32 µS), nothing read:
        rows are read as they are indexed, so a reader can take what it selects. Only the
        first ``n_readouts`` rows are complete readouts; valid while the reader is open."""
        try:
            return self._dataset(f"{S.READOUTS}/{S.CONDUCTANCE}")
        except (OSError, KeyError) as exc:
            raise SchemaError(f"{self.path}: readouts are corrupt ({exc})") from None

    def _times(self, sel: slice) -> dict[str, np.ndarray]:
        r = f"{S.READOUTS}/"
        return {"time_s": self._dataset(r + S.TIME)[sel],
                "chip_time_s": self._dataset(r + S.CHIP_TIME)[sel],
                "wall_time": self._dataset(r + S.WALL_TIME)[sel]}

    def close(self) -> None:
        if self._swmr_key is not None:
            key, self._swmr_key = self._swmr_key, None
            _SWMR.release(key)
        elif self.file.id.valid:
            self.file.close()
        self._release_writer()

    def _release_writer(self) -> None:
        if self._unpin is not None:
            unpin, self._unpin = self._unpin, None
            unpin()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
