"""Catching the catalog up with the files: ``scan`` registers what a folder holds (files
written while the catalog was down, files from before it, files that moved) and
``verify`` names registered files that are missing or changed. The files are the record:
everything registered is read from them."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcmlab.catalog.database import Catalog
from pcmlab.catalog.records import CellRange, cell_ranges, check_run_id, new_run_id, utc
from pcmlab.catalog.registration import file_fields
from pcmlab.errors import PcmlabError

log = logging.getLogger(__name__)

SUFFIXES = (".h5", ".hdf5", ".nc", ".json")


@dataclass
class ScanReport:
    added: list[tuple[str, Path]] = field(default_factory=list)  # (run id, path)
    updated: list[tuple[str, Path]] = field(default_factory=list)
    moved: list[tuple[str, Path, str]] = field(default_factory=list)  # (id, new, old path)
    unchanged: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # not pcmlab's
    # files pcmlab wrote (its schema attribute) that cannot be read: corrupt, truncated
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class FileRecord:
    """What a file says about itself, in the catalog's terms."""

    run_id: str | None
    kind: str
    fields: dict[str, Any]
    chip_identity: str | None = None
    cells: list[CellRange] | None = None


def read_file(path: Path) -> FileRecord | None:
    """The catalog's view of a file pcmlab wrote; None for any other file."""
    if path.suffix == ".json":
        return _check_report(path)
    if path.suffix == ".nc":
        return _sweep(path)
    return _run_file(path)


def _run_file(path: Path) -> FileRecord | None:
    from pcmlab.catalog.liveness import FILE_LOCKED_KINDS  # noqa: F401  (same vocabulary)
    from pcmlab.errors import SchemaError
    from pcmlab.filelock import writer_alive
    from pcmlab.store import RunReader
    from pcmlab.store.reader import opens_closed

    try:
        with RunReader(path) as run:
            prog = run.programming()
            targets = run.targets()
            n = run.n_readouts
            planned = run.schedule_time_s.size
            config = run.config
            mapping = run.network_mapping_json
            record = {"run_id": run.run_id, "kind": run.kind, "driver": run.driver_identity,
                      "created": run.created, "version": run.pcmlab_version,
                      "geometry": run.geometry, "interruptions": run.interruptions}
            evaluation = run.evaluation()
    except (SchemaError, OSError) as exc:
        if _has_pcmlab_schema(path):
            raise UnreadableFileError(f"{path}: a file pcmlab wrote that cannot be read "
                                      f"({exc})") from None
        return None
    if writer_alive(path):
        status = "running"
    elif not opens_closed(path):
        status = "killed"  # the writer died and left the file marked open
    elif record["interruptions"] and "recovered_at" in record["interruptions"][-1] and (
            prog is None or n < planned):
        status = "recovered"
    elif prog is not None and not prog.interrupted and n >= planned:
        status = "finished"
    else:
        status = "stopped"
    fields: dict[str, Any] = {
        "status": status, "driver": record["driver"], "resource": config.get("resource"),
        "geometry": record["geometry"], "config": config, "n_readouts": n,
        "n_cells": int(targets.cell.size), "pcmlab_version": record["version"],
        "started_at": utc(record["created"]) if record["created"] else None,
        "meta": {"interruptions": len(record["interruptions"])},
    }
    if mapping:
        fields["network_fingerprint"] = json.loads(mapping).get("fingerprint")
    if evaluation and evaluation.get("network_fingerprint"):
        fields["network_fingerprint"] = evaluation["network_fingerprint"]
    data = config.get("data")
    if isinstance(data, dict) and data.get("sha256"):
        fields["data_hash"] = data["sha256"]
    cells = None
    if prog is not None:
        cells = cell_ranges(targets.cell, "programmed", n_set=prog.set_pulses,
                            n_reset=prog.reset_pulses)
    return FileRecord(record["run_id"], record["kind"], fields,
                      record["driver"] or None, cells)


class UnreadableFileError(PcmlabError):
    """A file with pcmlab's schema attribute that cannot be read."""


def _has_pcmlab_schema(path: Path) -> bool:
    """Whether the HDF5 file carries pcmlab's ``schema`` attribute (read on its own, so
    a file whose data is damaged still tells)."""
    import h5py

    from pcmlab.store import schema as S

    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.attrs.get(S.ATTR_SCHEMA)
    except (OSError, ValueError):
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return isinstance(value, str) and value.split("/")[0] == S.SCHEMA_FAMILY


def _sweep(path: Path) -> FileRecord | None:
    from pcmlab.sweep import sweep_attrs

    attrs = sweep_attrs(path)
    if attrs is None:
        return None
    config = json.loads(attrs.get("sweep_json", "{}"))
    return FileRecord(attrs.get("run_id"), "sweep", {
        "status": "finished", "config": config, "meta": {"axes": config.get("axes", {})},
        "pcmlab_version": attrs.get("pcmlab_version", ""),
        "started_at": utc(attrs["created"]) if attrs.get("created") else None})


def _check_report(path: Path) -> FileRecord | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list) or \
            "failed" not in report:
        return None
    cells = report.get("cells") or {}
    ranges = ([CellRange("pulsed", int(cells["start"]), int(cells["stop"]))]
              if "start" in cells else None)
    return FileRecord(report.get("run_id"), "check", {
        "status": "finished", "driver": report.get("driver"),
        "resource": report.get("resource"), "meta": {"failed": report["failed"]},
        "started_at": utc(path.stat().st_mtime)}, report.get("driver"), ranges)


def _files(folder: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.endswith(".parts"))  # a sweep's pieces
        for name in sorted(names):
            if name.endswith(SUFFIXES) and ".resume" not in name:
                yield Path(root) / name


def scan(catalog: Catalog, folder: str | Path) -> ScanReport:
    """Register every pcmlab file under ``folder``: new ones are added, known ones (by run
    id, else by content hash) updated or found at their new path; idempotent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PcmlabError(f"{folder} is not a folder; give the folder to scan")
    report = ScanReport()
    host = socket.gethostname()
    for path in _files(folder):
        path = path.absolute()
        try:
            rec = read_file(path)
        except UnreadableFileError as exc:
            log.warning("%s", exc)
            report.unreadable.append((path, str(exc)))
            continue
        except PcmlabError as exc:
            report.skipped.append((path, str(exc)))
            continue
        if rec is None:
            report.skipped.append((path, "not a file pcmlab wrote"))
            continue
        if rec.run_id:
            try:
                check_run_id(rec.run_id, path)
            except PcmlabError as exc:
                log.warning("%s", exc)
                report.skipped.append((path, str(exc)))
                continue
        fields = dict(rec.fields)
        if fields["status"] != "running":
            fields.update(file_fields(path))
        known = None
        if rec.run_id:
            known = next(iter(catalog.list_runs_by_id([rec.run_id])), None)
        if known is None and "content_hash" in fields:
            same = catalog.list_runs(content_hash=fields["content_hash"])
            known = same[0] if same else None
        if known is None:
            run_id = rec.run_id or new_run_id()
            if not rec.run_id:
                fields["meta"] = {**fields.get("meta", {}), "run_id_in_file": False}
            catalog.register(run_id, kind=rec.kind, path=path, chip_identity=rec.chip_identity,
                             cells=rec.cells, host=host, **fields)
            report.added.append((run_id, path))
            continue
        if fields["status"] == "stopped" and known["status"] == "killed":
            # a writer killed between readouts left its file closed, as a stopped run's
            # is: the catalog, which saw it running, knows better
            fields["status"] = "killed"
        run_id = known["run_id"]
        old_path = Path(known["path"])
        if old_path != path and known["host"] == host and old_path.exists():
            report.skipped.append((path, f"a copy of {old_path} (run {run_id})"))
            continue
        moved = old_path != path
        changes = {k: v for k, v in fields.items() if k != "meta" and known.get(k) != v
                   and k not in ("geometry", "started_at")}
        if known.get("recorded_status", known["status"]) != fields["status"]:
            changes["status"] = fields["status"]  # e.g. killed, recorded as running
        if not moved and not changes:
            report.unchanged += 1
            continue
        catalog.register(run_id, kind=rec.kind, path=path, chip_identity=rec.chip_identity,
                         cells=rec.cells, host=host, **fields)
        if moved:
            report.moved.append((run_id, path, str(old_path)))
        else:
            report.updated.append((run_id, path))
    return report


@dataclass(frozen=True)
class Problem:
    run_id: str
    path: str
    what: str  # missing, changed, unreadable


def verify(catalog: Catalog) -> tuple[int, list[Problem], int]:
    """(files checked, problems, runs not checked: another host's, or still running)."""
    host = socket.gethostname()
    checked, problems, elsewhere = 0, [], 0
    for rec in catalog.list_runs(newest_first=False):
        if rec["host"] != host or rec["status"] == "running":
            elsewhere += 1
            continue
        path = Path(rec["path"])
        checked += 1
        if not path.exists():
            problems.append(Problem(rec["run_id"], str(path), "missing"))
            continue
        if rec["content_hash"] is None:
            continue  # never finished: nothing to compare (a killed run)
        try:
            now = file_fields(path)
        except OSError as exc:
            problems.append(Problem(rec["run_id"], str(path), f"unreadable ({exc})"))
            continue
        if now["content_hash"] != rec["content_hash"]:
            problems.append(Problem(rec["run_id"], str(path), "changed since it was "
                                    "registered"))
    return checked, problems, elsewhere
