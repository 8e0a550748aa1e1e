"""Registering what pcmlab writes: the one small interface every writer goes through
(``RunWriter`` for run files, so a script calling a protocol registers too; sweeps and
conformance reports call it directly).

The catalog never costs a measurement: if it cannot be reached or stays locked, the run
goes on, a warning says so once, and the writer records the pending registration in its
own file (root attribute ``catalog_pending``) for ``pcmlab catalog scan`` to catch up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from pcmlab.catalog.records import CellRange, new_run_id, now_utc
from pcmlab.errors import CatalogError

log = logging.getLogger(__name__)

OFF = "off"  # PCMLAB_CATALOG=off (or --catalog off): register nothing
PENDING_ATTR = "catalog_pending"
RUN_ID_ATTR = "run_id"
REGISTER_TIMEOUT_S = 5.0  # a run waits at most this long for a locked catalog
# after a failed send, updates during the run (the readout path) do not try that catalog
# again for this long: a locked or unreachable catalog delays at most one readout per
# period, never every one; start and finish always try
RETRY_AFTER_S = 300.0

_location: str | None = None  # set by configure(); None: PCMLAB_CATALOG or the default
_warned: set[str] = set()
_failed_at: dict[str, float] = {}  # location -> time.monotonic() of its last failed send


def configure(location: str | os.PathLike[str] | None) -> None:
    """Where this process registers (the command line's ``--catalog``); None: as
    ``PCMLAB_CATALOG`` says, else the per-user default; ``"off"``: nowhere."""
    global _location
    _location = None if location is None else str(location)


def location() -> str | None:
    """The catalog this process registers in, or None when registration is off."""
    from pcmlab.catalog.location import resolve_location

    where = resolve_location(_location)
    return None if where.strip().lower() == OFF else where


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fields(path: str | Path) -> dict[str, Any]:
    """The finished file's hash and size."""
    p = Path(path)
    return {"content_hash": content_hash(p), "file_size": p.stat().st_size}


class Registration:
    """One file's entry in the catalog, from its creation to its end.

    ``pending`` is None while the catalog has everything, else why it has not (what the
    file records for ``scan``)."""

    def __init__(self, run_id: str, kind: str, path: Path) -> None:
        self.run_id, self.kind, self.path = run_id, kind, path
        self.pending: str | None = None
        # the record start() could not send: sent whole with the first update or finish
        # that reaches a catalog not knowing the run (chip, config, start time, ...)
        self._unsent: dict[str, Any] | None = None
        # what updates could not send (the programmed cells with their pulse counts, ...):
        # carried into the next send, so the finish brings them if nothing else did
        self._carried: dict[str, Any] = {}
        self._carried_cells: list[CellRange] | None = None

    @classmethod
    def start(cls, kind: str, path: str | Path, *, run_id: str | None = None,
              chip_identity: str | None = None, cells: list[CellRange] | None = None,
              status: str = "running", **fields: Any) -> Registration:
        """Register a file being created (status running, this process as its writer)."""
        reg = cls(run_id or new_run_id(), kind, Path(path).absolute())
        fields.setdefault("pid", os.getpid())
        fields.setdefault("started_at", now_utc())
        record = dict(fields, chip_identity=chip_identity, cells=cells, status=status)
        if not reg._send(lambda cat: cat.register(reg.run_id, kind=kind, path=reg.path,
                                                  **record)):
            reg._unsent = record
        return reg

    def update(self, *, cells: list[CellRange] | None = None, **fields: Any) -> bool:
        """Change fields while the file is written (e.g. the cells, once programmed)."""
        return self._send_fields(cells, fields, hot=True)

    def _send_fields(self, cells: list[CellRange] | None, fields: dict[str, Any], *,
                     hot: bool = False) -> bool:
        unsent = self._unsent
        if cells is None:
            cells = self._carried_cells
        meta = {**(self._carried.get("meta") or {}), **(fields.get("meta") or {})}
        fields = {**self._carried, **fields}
        if meta:
            fields["meta"] = meta

        def action(cat: Any) -> None:
            if unsent is not None and not cat.list_runs_by_id([self.run_id]):
                record = {**unsent, **fields}
                record["meta"] = {**(unsent.get("meta") or {}), **(fields.get("meta") or {})}
                if cells is not None:
                    record["cells"] = cells
                cat.register(self.run_id, kind=self.kind, path=self.path, **record)
            else:
                cat.register(self.run_id, kind=self.kind, path=self.path, cells=cells,
                             **fields)

        if not self._send(action, hot=hot):
            self._carried, self._carried_cells = fields, cells
            return False
        self._unsent = None
        self._carried, self._carried_cells = {}, None
        return True

    def finish(self, status: str, *, cells: list[CellRange] | None = None,
               hash_file: bool = True, **fields: Any) -> bool:
        """The file is complete: its status, end time, hash and size."""
        fields.setdefault("ended_at", now_utc())
        if hash_file and self.path.exists():
            fields.update(file_fields(self.path))
        return self._send_fields(cells, {**fields, "status": status})

    def pending_record(self) -> str:
        """What a file records when its registration is pending (JSON)."""
        return json.dumps({"run_id": self.run_id, "kind": self.kind,
                           "since": now_utc().isoformat(timespec="seconds"),
                           "reason": self.pending or ""}, sort_keys=True)

    def _send(self, action: Any, *, hot: bool = False) -> bool:
        """``hot``: on a measurement's path (an update during the run): skipped while the
        catalog failed within the last ``RETRY_AFTER_S``."""
        where = location()
        if where is None:
            return True  # registration switched off: nothing is pending
        if hot and time.monotonic() - _failed_at.get(where, -math.inf) < RETRY_AFTER_S:
            self.pending = self.pending or f"catalog {where} unavailable"
            return False
        from pcmlab.catalog.database import Catalog

        try:
            with Catalog.open(where, timeout_s=REGISTER_TIMEOUT_S) as cat:
                action(cat)
        except CatalogError as exc:
            _failed_at[where] = time.monotonic()
            self.pending = str(exc)
            if where not in _warned:  # once: a month-long run must not warn per readout
                _warned.add(where)
                log.warning("the catalog is unavailable, the run goes on; its file records "
                            "the registration and 'pcmlab catalog scan' will catch up (%s)",
                            exc)
            return False
        _failed_at.pop(where, None)
        self.pending = None
        return True


def register_file(kind: str, path: str | Path, *, status: str = "finished",
                  run_id: str | None = None, started_at: dt.datetime | None = None,
                  **fields: Any) -> Registration:
    """Register a file written in one go (a conformance report): start and finish."""
    reg = Registration(run_id or new_run_id(), kind, Path(path).absolute())
    fields = {**fields, **file_fields(reg.path)} if reg.path.exists() else dict(fields)
    fields.setdefault("ended_at", now_utc())
    fields.setdefault("started_at", started_at or fields["ended_at"])
    reg._send(lambda cat: cat.register(reg.run_id, kind=kind, path=reg.path,
                                       status=status, **fields))
    return reg


def file_changed(path: str | Path, **fields: Any) -> bool:
    """A registered HDF5 file was completed after its writer closed (a deployment's
    ``/evaluation``): record its new hash and size, and ``fields``. Pending in the file if
    the catalog is unavailable."""
    import h5py

    p = Path(path)
    with h5py.File(p, "r") as f:
        run_id = f.attrs.get(RUN_ID_ATTR)
        kind = f.attrs.get("kind", "run")
    if run_id is None:
        return False
    reg = Registration(str(run_id), str(kind), p.absolute())
    if reg._send(lambda cat: cat.register(reg.run_id, kind=reg.kind, path=reg.path,
                                          **fields, **file_fields(p))):
        return True
    with h5py.File(p, "a") as f:
        f.attrs[PENDING_ATTR] = reg.pending_record()
    return False
