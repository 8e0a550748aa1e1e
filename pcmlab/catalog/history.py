"""A cell's life across runs: every run that touched the cells (from the catalog), what it
did to each (from the run's file: target, converged, iterations, pulses) and its reads,
with the cumulative pulse count per cell (endurance). Nothing measured comes from the
database: the catalog only says which files to read."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pcmlab.catalog.database import Catalog
from pcmlab.errors import CatalogError, PcmlabError

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

RUN_FILE_KINDS = ("run", "deployment", "characterization")


def parse_cells(text: str) -> tuple[int, int]:
    """``START:STOP`` (STOP excluded) or one cell, as (start, stop)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
    if not m:
        raise CatalogError(f"cells {text!r}: expected START:STOP (e.g. 1000:1010) or one "
                           "cell index")
    start = int(m.group(1))
    stop = int(m.group(2)) if m.group(2) is not None else start + 1
    if stop <= start:
        raise CatalogError(f"cells {text!r}: STOP must be above START (STOP is excluded)")
    return start, stop


def cell_history(chip: str, cells: str | tuple[int, int] | range,
                 catalog: str | Path | Catalog | None = None) -> xr.Dataset:
    """The history of cells [start, stop) of ``chip`` (its serial) as an xarray Dataset:
    dims ``run`` (every run that touched a cell, oldest first) and ``cell``; per run and
    cell what was done (``target_us``, ``programmed``, ``converged``, ``iterations``,
    ``set_pulses``, ``reset_pulses``, ``verify_us``) and ``cumulative_pulses`` (SET + RESET
    up to and including that run); the reads on dims ``read`` x ``cell``
    (``conductance_us``, with ``read_run``, ``read_time_s`` since that run's programming
    and ``read_wall_time``). A cell a run did not touch is NaN (False) in that run."""
    if isinstance(cells, str):
        start, stop = parse_cells(cells)
    elif isinstance(cells, range):
        start, stop = cells.start, cells.stop
    else:
        start, stop = int(cells[0]), int(cells[1])
    if isinstance(catalog, Catalog):
        return _history(catalog, chip, start, stop)
    from pcmlab.catalog import open_catalog

    with open_catalog(catalog) as cat:
        return _history(cat, chip, start, stop)


def _history(cat: Catalog, chip: str, start: int, stop: int) -> xr.Dataset:
    import xarray as xr

    from pcmlab.store import RunReader

    ranges = cat.cell_ranges(chip=chip, start=start, stop=stop)
    if not ranges and not any(c["serial"] == chip or c["identity"] == chip
                              for c in cat.chips()):
        serials = ", ".join(sorted({c["serial"] for c in cat.chips()})) or "none"
        raise CatalogError(f"no chip {chip!r} in catalog {cat.location} (chips: {serials})")
    runs: list[dict[str, Any]] = []
    seen = set()
    for r in ranges:  # oldest run first
        if r["run_id"] not in seen:
            seen.add(r["run_id"])
            runs.append(r)
    wanted = np.arange(start, stop, dtype=np.int64)
    n_runs, n_cells = len(runs), wanted.size
    per_run = {name: np.full((n_runs, n_cells), np.nan) for name in
               ("target_us", "iterations", "set_pulses", "reset_pulses", "verify_us")}
    programmed = np.zeros((n_runs, n_cells), dtype=bool)
    converged = np.zeros((n_runs, n_cells), dtype=bool)
    found = np.zeros(n_runs, dtype=bool)
    reads: list[np.ndarray] = []
    read_run: list[int] = []
    read_time: list[float] = []
    read_wall: list[float] = []
    for k, r in enumerate(runs):
        path = Path(r["path"])
        if r["kind"] not in RUN_FILE_KINDS:
            continue  # a conformance check: its pulses are not recorded per cell
        try:
            run = RunReader(path)
        except (PcmlabError, OSError) as exc:
            log.warning("run %s: its file %s cannot be read (%s); 'pcmlab catalog scan' "
                        "finds a file that moved", r["run_id"][:8], path, exc)
            continue
        with run:
            found[k] = True
            targets = run.targets()
            in_file = wanted + r["file_offset"]  # the file's numbers (a chip group's)
            order = np.argsort(targets.cell, kind="stable")
            pos = np.searchsorted(targets.cell[order], in_file)
            pos = np.minimum(pos, max(targets.cell.size - 1, 0))
            hit = targets.cell[order][pos] == in_file
            idx = order[pos[hit]]  # positions in the file of the cells it has
            per_run["target_us"][k, hit] = targets.conductance_us[idx]
            prog = run.programming()
            if prog is not None:
                programmed[k, hit] = True
                converged[k, hit] = prog.converged[idx]
                per_run["iterations"][k, hit] = prog.iterations[idx]
                per_run["verify_us"][k, hit] = prog.conductance_us[idx]
            # the pulses as far as programming got (a run killed mid-programming too)
            counts = run.pulse_counts()
            if counts is not None:
                per_run["set_pulses"][k, hit] = counts[0][idx]
                per_run["reset_pulses"][k, hit] = counts[1][idx]
            ro = run.readouts()
            for i in range(ro.n):
                row = np.full(n_cells, np.nan, dtype=np.float32)
                row[hit] = ro.conductance_us[i, idx]
                reads.append(row)
                read_run.append(k)
                read_time.append(float(ro.time_s[i]))
                read_wall.append(float(ro.wall_time[i]))
    pulses = np.nan_to_num(per_run["set_pulses"]) + np.nan_to_num(per_run["reset_pulses"])
    g = np.stack(reads) if reads else np.zeros((0, n_cells), dtype=np.float32)
    ds = xr.Dataset(
        {
            "target_us": (("run", "cell"), per_run["target_us"], {"units": "µS"}),
            "programmed": (("run", "cell"), programmed),
            "converged": (("run", "cell"), converged),
            "iterations": (("run", "cell"), per_run["iterations"]),
            "verify_us": (("run", "cell"), per_run["verify_us"],
                          {"units": "µS", "long_name": "final verify reading"}),
            "set_pulses": (("run", "cell"), per_run["set_pulses"]),
            "reset_pulses": (("run", "cell"), per_run["reset_pulses"]),
            "cumulative_pulses": (("run", "cell"), np.cumsum(pulses, axis=0),
                                  {"long_name": "SET + RESET pulses up to this run "
                                   "(endurance), from the runs' files"}),
            "conductance_us": (("read", "cell"), g, {"units": "µS"}),
        },
        coords={
            "cell": ("cell", wanted),
            "run_id": ("run", [r["run_id"] for r in runs]),
            "kind": ("run", [r["kind"] for r in runs]),
            "started_at": ("run", np.array([np.datetime64(r["started_at"].replace(
                tzinfo=None), "us") for r in runs], dtype="datetime64[us]")),
            "path": ("run", [r["path"] for r in runs]),
            "file_found": ("run", found),
            "read_run": ("read", np.asarray(read_run, dtype=np.int64)),
            "read_time_s": ("read", np.asarray(read_time, dtype=np.float64),
                            {"units": "s", "long_name": "time since that run's "
                             "programming"}),
            "read_wall_time": ("read", np.asarray(read_wall, dtype=np.float64),
                               {"units": "s", "long_name": "Unix time"}),
        },
        attrs={"chip": chip, "cells": f"{start}:{stop}",
               "note": "pulses of conformance checks (kind check) are not recorded per "
                       "cell and are not counted"},
    )
    return ds


def run_path(run: str | Path, catalog: str | Path | None = None) -> Path:
    """A run's file from its path, or from its run id (or a unique prefix) via the
    catalog."""
    path = Path(run)
    if path.exists() or not re.fullmatch(r"[0-9a-fA-F-]{4,36}", str(run)):
        return path
    from pcmlab.catalog import open_catalog

    with open_catalog(catalog) as cat:
        return Path(cat.get(str(run))["path"])
