"""The dashboard's one door to the catalog: which runs exist and where their files are.

Every page finds a file through ``Catalog.run(run_id)``; no path from a URL reaches the
file system. ``FileIndex`` is an index over files named when the server starts (the
stand-in until the catalog's own API is wired here).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

STATUSES = ("running", "finished", "stopped", "killed", "resumed", "recovered")
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
    since: str | None = None  # ISO date or time, UTC
    until: str | None = None
    tag: tuple[str, ...] = ()
    where: tuple[str, ...] = ()  # KEY=VALUE on metadata


class Catalog(Protocol):
    def runs(self, filt: RunFilter, offset: int, limit: int) -> tuple[list[RunEntry], int]:
        """A page of runs, newest first, and how many match in all."""
        ...

    def run(self, run_id: str) -> RunEntry | None:
        """The run with this id, or None."""
        ...


def _lock_held(path: Path) -> bool:
    """Whether a live writer holds its lock on the file (see ``RunWriter``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _describe(path: Path) -> RunEntry:
    from pcmlab.store.reader import RunReader, opens_closed
    from pcmlab.sweep import sweep_attrs

    run_id = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    attrs = sweep_attrs(path)
    if attrs is not None:
        return RunEntry(run_id, "sweep", "finished", path, str(attrs.get("created", "")))
    with RunReader(path) as r:
        kind = "deployment" if r.network_mapping_json is not None else "run"
        n = r.n_readouts
        identity, created = r.driver_identity, r.created
    if _lock_held(path):
        status = "running"
    elif not opens_closed(path):
        status = "killed"
    else:
        status = "finished"
    return RunEntry(run_id, kind, status, path, created, identity, n)


class FileIndex:
    """A catalog of the files given (each a run, deployment or sweep file)."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self._paths: dict[str, Path] = {}
        for p in paths:
            self.add(p)

    def add(self, path: str | Path) -> str:
        """Register a file; its id."""
        path = Path(path).resolve()
        entry = _describe(path)
        self._paths[entry.id] = path
        return entry.id

    def _entries(self) -> list[RunEntry]:
        return [_describe(p) for p in self._paths.values()]

    def runs(self, filt: RunFilter, offset: int = 0, limit: int = 50
             ) -> tuple[list[RunEntry], int]:
        rows = [e for e in self._entries() if _matches(e, filt)]
        rows.sort(key=lambda e: e.started, reverse=True)
        return rows[offset:offset + limit], len(rows)

    def run(self, run_id: str) -> RunEntry | None:
        path = self._paths.get(run_id)
        return None if path is None else _describe(path)


def _matches(e: RunEntry, f: RunFilter) -> bool:
    if f.chip and f.chip not in e.chip:
        return False
    if f.kind and e.kind != f.kind:
        return False
    if f.status and e.status != f.status:
        return False
    if f.since and e.started < f.since:
        return False
    return not (f.until and e.started > f.until)


def parse_time(text: str) -> str:
    """An ISO date or time as the catalog compares it (UTC)."""
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def open_catalog(files: Sequence[str | Path]) -> Catalog:
    return FileIndex(files)
