"""The dashboard's one door to the catalog (``pcmlab.catalog``): which runs exist and
where their files are.

Every page finds a file through ``CatalogView.run(run_id)``, an exact id looked up in the
catalog; no path from a URL reaches the file system.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcmlab.catalog import Catalog, open_catalog
from pcmlab.catalog.records import parse_value

log = logging.getLogger(__name__)

STATUSES = ("running", "finished", "stopped", "killed", "resumed", "recovered", "failed")
KINDS = ("run", "deployment", "characterization", "sweep", "check")


@dataclass(frozen=True)
class RunEntry:
    """One row of the runs table."""

    id: str
    kind: str
    status: str
    path: Path
    started: str  # ISO 8601 UTC
    chip: str = ""
    n_readouts: int | None = None
    ended: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFilter:
    """The filters ``pcmlab runs`` has."""

    chip: str | None = None
    kind: str | None = None
    status: str | None = None
    since: str | None = None  # ISO 8601, UTC if no zone
    until: str | None = None
    tag: tuple[str, ...] = ()
    where: tuple[str, ...] = ()  # KEY=VALUE on metadata, VALUE as parse_value reads it

    def arguments(self) -> dict[str, Any]:
        """As ``Catalog.list_runs`` takes them; ValueError naming a malformed one."""
        out: dict[str, Any] = {}
        for name in ("chip", "kind", "status"):
            value = getattr(self, name)
            if value:
                out[name] = value
        for name in ("since", "until"):
            value = getattr(self, name)
            if value:
                out[name] = parse_time(value)
                if name == "until" and len(value.strip()) == 10:
                    # a date alone: the catalog takes in the whole of that day
                    out[name] = out[name].date()
        if self.tag:
            out["tag"] = list(self.tag)
        where = {}
        for item in self.where:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"where {item!r}: expected KEY=VALUE, e.g. operator=ada")
            where[key.strip()] = parse_value(value)  # as 'pcmlab runs --where' reads it
        if where:
            out["where"] = where
        return out


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 date or time, UTC when it has no zone; ValueError naming it."""
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"time {text!r}: expected ISO 8601, e.g. 2026-03-01 or "
                         "2026-03-01T12:00") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds")
    return "" if value is None else str(value)


def entry_of(rec: dict[str, Any]) -> RunEntry:
    chip = rec.get("chip_serial") or ""
    if chip and rec.get("chip_model"):
        chip = f"{rec['chip_model']} {chip}"
    return RunEntry(id=str(rec["run_id"]), kind=str(rec["kind"]), status=str(rec["status"]),
                    path=Path(str(rec["path"])), started=_iso(rec.get("started_at")),
                    chip=chip or str(rec.get("driver") or ""),
                    n_readouts=rec.get("n_readouts"), ended=_iso(rec.get("ended_at")) or None,
                    tags=dict(rec.get("meta") or {}))


class CatalogView:
    """Read-only queries the pages make of the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @classmethod
    def open(cls, location: str | Path | None = None) -> CatalogView:
        # read-only, as docs/dashboard.md promises: never creates, migrates or writes
        return cls(open_catalog(location, read_only=True))

    def runs(self, filt: RunFilter, offset: int = 0, limit: int = 50
             ) -> tuple[list[RunEntry], int]:
        """A page of runs, newest first, and how many match in all (paged and counted in
        the catalog's SQL)."""
        args = filt.arguments()
        found = self.catalog.list_runs(**args, offset=offset, limit=limit)
        return [entry_of(r) for r in found], self.catalog.count_runs(**args)

    def run(self, run_id: str) -> RunEntry | None:
        """The run with exactly this id, or None."""
        from pcmlab.catalog.liveness import effective_status
        from pcmlab.errors import CatalogError

        try:
            rec = self.catalog.get(run_id)
        except CatalogError:
            return None
        if rec["run_id"] != run_id:  # get() takes a unique prefix too; a page does not
            return None
        rec["status"] = effective_status(rec)
        return entry_of(rec)

    def close(self) -> None:
        self.catalog.close()

    def cell_history(self, chip: str, cell: int):  # -> xarray.Dataset
        """The cell's life across runs (``pcmlab.cell_history``); CatalogError for a chip
        the catalog does not know."""
        from pcmlab.catalog.history import cell_history
        from pcmlab.store.reader import reading_without_locks

        # the history opens every run's file that touched the cell: without HDF5 locks, so
        # that a page never stops a writer, resume or recover from opening one
        with reading_without_locks():
            return cell_history(chip, (cell, cell + 1), catalog=self.catalog)
