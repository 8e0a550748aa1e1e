"""What the dashboard's pages show, computed from a run's file (numpy, no Bokeh).

A ``RunData`` opens one measurement file read-only and keeps per-level statistics of
every readout it has seen; ``poll`` takes the rows a live writer flushed since the last
look (HDF5 SWMR), so a page only ever processes a row once.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pcmlab.analysis import (
    DriftStats,
    LevelStats,
    convergence_by_level,
    drift_by_level,
    group_levels,
)
from pcmlab.pcm_model import PCMCalibration, PCMModel
from pcmlab.store import RunReader

log = logging.getLogger(__name__)


class UnlockedReader(RunReader):
    """A ``RunReader`` that takes no HDF5 file lock: a page left open must never stop a
    writer from opening the file (``pcmlab deploy`` adding /evaluation, ``resume``,
    ``recover``); HDF5's lock of a plain read-only open would."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, locking=False)


PUBLISHED = "the published PCM constants (Joshi et al. 2020, Nandakumar et al. 2019)"


def recorded_calibration(config: dict[str, Any]) -> tuple[PCMCalibration | None, str]:
    """The PCM model constants a file records, and where in its configuration they are:
    the calibration a deployment was simulated with (``calibration``, e.g. from
    ``pcmlab fit``), else the mock chip's own (``chip.calibration``, or chip 0's of a
    group). (None, why) when the file records none or one that is not valid."""
    places = [("calibration", config.get("calibration"))]
    chip, chips = config.get("chip"), config.get("chips")
    if isinstance(chip, dict):
        places.append(("chip.calibration", chip.get("calibration")))
    if isinstance(chips, list) and chips and isinstance(chips[0], dict):
        places.append(("chips[0].calibration", chips[0].get("calibration")))
    for where, data in places:
        if data is None:
            continue
        try:
            return PCMCalibration.model_validate(data), where
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            log.warning("the file's %s is not a valid PCM calibration (%s); the model "
                        "takes the published constants", where, str(exc).splitlines()[0])
            return None, f"its {where} is not a valid calibration"
    return None, "it records no calibration"


DRIFT_SAMPLE_CELLS = 20_000  # cells whose drift exponent is fitted (seeded sample)
MODEL_SAMPLE_CELLS = 2_000  # targets per level in the model's Monte Carlo band
MODEL_TIMES = 60  # points of the model's curves over the schedule


@dataclass(frozen=True)
class LevelCurve:
    """Conductance vs time of one target level: measured mean and std per readout over
    its converged cells, and the calibrated model's mean and std (Monte Carlo)."""

    label: str
    target_us: float
    cells: int
    model_time_s: npt.NDArray[np.float64]
    model_mean_us: npt.NDArray[np.float64]
    model_std_us: npt.NDArray[np.float64]


class RunData:
    """One run's file, followed while it is written."""

    def __init__(self, path: str | Path, *, model: PCMModel | None = None,
                 seed: int = 0) -> None:
        self.path = Path(path)
        self.reader = UnlockedReader(self.path)
        r = self.reader
        self.config = r.config
        if model is not None:
            self.model, self.model_origin = model, "the model given"
        else:
            # the model a page draws beside the measurement is the one the file's chip was
            # calibrated with; the published constants only when the file records none
            calibration, where = recorded_calibration(self.config)
            self.model = PCMModel(calibration)
            self.model_origin = (f"the calibration the file records ({where})"
                                 if calibration is not None else f"{PUBLISHED}: {where}")
        self.driver_identity = r.driver_identity
        self.created = r.created
        targets = r.targets()
        self.cell = targets.cell.astype(np.intp)
        self.target_us = targets.conductance_us
        self.layer = targets.layer
        geometry = r.geometry
        if geometry is None:  # a file from before pcmlab recorded its geometry
            n = int(self.cell.max()) + 1
            cols = int(2 ** np.ceil(np.log2(np.sqrt(n))))
            geometry = {"rows": -(-n // cols), "cols": cols, "arrays": 1}
        self.geometry = geometry
        # geometry rows are every array's, stacked (ChipInfo.arrays: each has rows / arrays)
        self.shape = (int(geometry["rows"]), int(geometry["cols"]))
        self.schedule_time_s = r.schedule_time_s
        self.groups = group_levels(self.target_us)
        self.programming = r.programming()
        self.converged = (self.programming.converged if self.programming is not None
                          else np.zeros(self.cell.size, bool))
        rng = np.random.default_rng(seed)
        n = self.cell.size
        self.sample = np.sort(rng.choice(n, size=min(n, DRIFT_SAMPLE_CELLS), replace=False))
        self._rng_seed = seed
        # per readout: times, per-level mean and std (converged cells), sampled cells
        self.time_s: list[float] = []
        self.wall_time: list[float] = []
        self.level_mean_us: list[npt.NDArray[np.float64]] = []
        self.level_std_us: list[npt.NDArray[np.float64]] = []
        self._sample_rows: list[npt.NDArray[np.float32]] = []
        self._last_row: npt.NDArray[np.float32] | None = None
        self._index_levels()
        self.poll()

    # -- following -------------------------------------------------------------------------
    @property
    def n_readouts(self) -> int:
        return len(self.time_s)

    @property
    def live(self) -> bool:
        """Whether the file is open for writing (a live writer, or a killed one)."""
        return bool(self.reader.file.swmr_mode)

    def poll(self) -> list[int]:
        """Take the readouts completed since the last call; their indices."""
        r = self.reader
        r.refresh()
        if self.programming is None:
            self.programming = r.programming()
            if self.programming is not None:
                self.converged = self.programming.converged
                self._index_levels()
        n = r.n_readouts
        new = list(range(self.n_readouts, n))
        for i in new:
            ro = r.readouts(i, i + 1)
            self._take(float(ro.time_s[0]), float(ro.wall_time[0]), ro.conductance_us[0])
        return new

    def _index_levels(self) -> None:
        """Converged cells ordered by level, so a readout's level sums are slice sums."""
        self._level_of = np.where(self.converged, self.groups.index, -1)
        counts = np.bincount(self._level_of[self._level_of >= 0], minlength=len(self.groups))
        self._level_count = counts.astype(np.float64)
        # few levels: a stable sort of 16-bit keys is numpy's radix sort, several times
        # faster than one of intp on a million cells
        keys = (self._level_of.astype(np.int16) if len(self.groups) < 2**15
                else self._level_of)
        order = np.argsort(keys, kind="stable")
        self._order = order[self._level_of[order] >= 0]
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)

    def _take(self, time_s: float, wall_time: float, g_us: npt.NDArray[np.float32]) -> None:
        k = len(self.groups)
        mean = np.full(k, np.nan)
        std = np.full(k, np.nan)
        if self._order.size:
            g = g_us[self._order].astype(np.float64)
            present = self._level_count > 0
            starts = self._starts[present]  # reduceat needs strictly valid, non-empty slices
            count = self._level_count[present]
            sums = np.add.reduceat(g, starts)
            g *= g
            squares = np.add.reduceat(g, starts)
            mean[present] = sums / count
            std[present] = np.sqrt(np.maximum(squares / count - mean[present] ** 2, 0.0))
        self.time_s.append(time_s)
        self.wall_time.append(wall_time)
        self.level_mean_us.append(mean)
        self.level_std_us.append(std)
        self._sample_rows.append(g_us[self.sample])
        self._last_row = g_us

    # -- views -----------------------------------------------------------------------------
    def image(self, readout: int | None = None) -> npt.NDArray[np.float32]:
        """The array's conductance at one readout (default: the last) as rows x cols µS,
        NaN where the run holds no cell; before any readout, the final verify reading."""
        if readout is None or readout == self.n_readouts - 1:
            g = self._last_row
        else:
            if not 0 <= readout < self.n_readouts:
                raise IndexError(f"readout {readout}: this run has {self.n_readouts}")
            g = self.reader.readouts(readout, readout + 1).conductance_us[0]
        if g is None:
            g = (self.programming.conductance_us if self.programming is not None
                 else np.full(self.cell.size, np.nan, np.float32))
        flat = np.full(self.shape[0] * self.shape[1], np.nan, dtype=np.float32)
        flat[self.cell] = g
        return flat.reshape(self.shape)

    def _memo(self, name: str, key: object, compute):
        """``compute()``, computed once per ``key`` (the pages of one file share it)."""
        memo = self.__dict__.setdefault("_memos", {})
        hit = memo.get(name)
        if hit is None or hit[0] != key:
            hit = memo[name] = (key, compute())
        return hit[1]

    def convergence(self) -> list[LevelStats] | None:
        """Program-and-verify outcome per target level; None before it finished."""
        p = self.programming
        if p is None:
            return None
        return self._memo("convergence", id(p), lambda: convergence_by_level(
            self.target_us, p.conductance_us, p.converged, p.iterations, model=self.model,
            groups=self.groups))

    def drift(self) -> list[DriftStats] | None:
        """Fitted drift exponent per level over the sampled converged cells, beside the
        model; None while fewer than two readouts at or after t0 exist."""
        t = np.asarray(self.time_s)
        if int((t >= self.model.calibration.t0_s).sum()) < 2:
            return None
        return self._memo("drift", (self.n_readouts, id(self.converged)),
                          lambda: drift_by_level(
                              self.target_us[self.sample], t, np.stack(self._sample_rows),
                              mask=self.converged[self.sample], model=self.model))

    def level_labels(self) -> list[str]:
        return [self.groups.label(k) for k in range(len(self.groups))]

    def model_curves(self) -> list[LevelCurve]:
        """Per level (non-empty, converged cells): the model's mean and std of G over the
        whole schedule, what is still to come included (seeded Monte Carlo over up to
        ``MODEL_SAMPLE_CELLS`` of the level's targets)."""
        return self._memo("model_curves", (max(self.time_s, default=0.0),
                                           id(self.converged)), self._model_curves)

    def _model_curves(self) -> list[LevelCurve]:
        t0 = self.model.calibration.t0_s
        planned = self.schedule_time_s[np.isfinite(self.schedule_time_s)]
        t_hi = max(float(planned.max()) if planned.size else 0.0,
                   max(self.time_s, default=0.0), 10 * t0)
        t_lo = min(float(planned.min()) if planned.size else t0, t0)
        times = np.geomspace(t_lo, t_hi, MODEL_TIMES)
        rng = np.random.default_rng(self._rng_seed)
        out = []
        for k in range(len(self.groups)):
            sel = np.flatnonzero((self.groups.index == k) & self.converged)
            if sel.size == 0:
                continue
            if sel.size > MODEL_SAMPLE_CELLS:
                sel = rng.choice(sel, MODEL_SAMPLE_CELLS, replace=False)
            g = self.model.simulate(self.target_us[sel], times, rng)
            out.append(LevelCurve(self.groups.label(k), float(self.groups.mean_target_us[k]),
                                  int(self._level_count[k]), times, g.mean(axis=1),
                                  g.std(axis=1)))
        return out

    def evaluation(self) -> dict[str, Any] | None:
        return self.reader.evaluation()

    def network_mapping(self) -> dict[str, Any] | None:
        text = self.reader.network_mapping_json
        return None if text is None else json.loads(text)

    def close(self) -> None:
        self.reader.close()


class SharedRuns:
    """The ``RunData`` of each file that a server's pages have open, one per file and
    shared by every page of it: a file's readouts are read and summarized once, however
    many people look at the run (and a page opened again finds the work done). Pages run
    on the server's one event loop; the lock only guards opening and releasing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, int], tuple[RunData, int]] = {}

    def acquire(self, path: str | Path) -> RunData:
        """The file's shared ``RunData`` (opened if no page has it); ``release`` it."""
        st = Path(path).stat()  # a file replaced at the same path is another file
        key = (st.st_dev, st.st_ino)
        with self._lock:
            data, count = self._open.get(key, (None, 0))
            if data is None:
                data = RunData(path)
            self._open[key] = (data, count + 1)
            return data

    def release(self, data: RunData) -> None:
        """One page less; the last one closes the file."""
        with self._lock:
            for key, (d, count) in self._open.items():
                if d is data:
                    if count > 1:
                        self._open[key] = (d, count - 1)
                        return
                    del self._open[key]
                    break
        data.close()

    def close_all(self) -> None:
        """Close every file (the server stops; its sessions end with it)."""
        with self._lock:
            open_, self._open = self._open, {}
        for data, _ in open_.values():
            data.close()

    def __len__(self) -> int:
        return len(self._open)


@dataclass(frozen=True)
class ArrayFill:
    array: int
    cells_used: int
    cells_total: int

    @property
    def fraction(self) -> float:
        return self.cells_used / self.cells_total


def array_fill(cell: npt.NDArray[np.intp], geometry: dict[str, int]) -> list[ArrayFill]:
    """Per array (or chip of a group): how many of its cells the run holds."""
    arrays = int(geometry.get("arrays", 1))
    # the recorded rows are the stacked arrays' (a group of N chips: N x a chip's rows)
    per = int(geometry["rows"]) // arrays * int(geometry["cols"])
    counts = np.bincount(np.asarray(cell) // per, minlength=arrays)
    return [ArrayFill(k, int(counts[k]), per) for k in range(arrays)]


def layer_rows(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mapped weight matrix: its name, kind, shape and the arrays it is on."""
    rows = []
    for layer in mapping.get("layers", []):
        arrays = sorted({int(t.get("array", 0)) for t in layer.get("tiles", [])})
        rows.append({"index": int(layer["index"]), "name": str(layer["name"]),
                     "kind": str(layer.get("kind", "")),
                     "weight_shape": "x".join(str(d) for d in layer.get("weight_shape", [])),
                     "tiles": len(layer.get("tiles", [])),
                     "arrays": ", ".join(str(a) for a in arrays)})
    return rows


CHIP_CURVES = (  # /evaluation datasets of chip mode, and their legend
    ("chip_uncorrected", "chip MVM, uncorrected"),
    ("chip_drift_compensated", "chip MVM + drift compensation"),
    ("chip_calibrated_once", "chip MVM, calibrated once"),
    ("chip_recalibrated", "chip MVM, recalibrated"),
)

