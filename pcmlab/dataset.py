"""Run files as xarray Datasets, and the analysis tables as functions of such a dataset.

``open_run(path)`` reads through pcmlab's reader, so it works on a finished file, on a
file a run is still writing (SWMR: the readouts complete so far) and on a file whose
writer was killed. The conductances are not read at opening: they are a dask array over
the file, chunked by readout. Dimensions: ``readout`` (completed readouts, in order) and ``cell``
(the run's cells, in the file's order); ``planned`` for the schedule. Every variable has
``units`` in its attributes; the run's metadata is in the dataset's attributes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pcmlab.analysis import (
    DriftStats,
    LevelStats,
    convergence_by_level,
    drift_by_level,
    fit_drift,
    group_levels,
)
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.pcm_model import PCMModel

if TYPE_CHECKING:
    import xarray as xr

    from pcmlab.store.reader import RunReader


def _xarray():  # -> the xarray module
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        raise SchemaError("xarray is not installed: pip install xarray") from None
    return xr


def open_run(path: str | Path) -> xr.Dataset:
    """The run in ``path`` as an ``xarray.Dataset``. Works while the run is still being
    written (the readouts complete when it was opened) and on a killed run's file.

    The conductances stay in the file (a dask array, chunked by readout): opening costs
    the same for any number of readouts, and memory follows what is selected and
    computed. Everything per cell and per readout else is read at once. The file stays
    open until ``ds.close()`` (or the end of a ``with pcmlab.open_run(path) as ds:``
    block); ``ds.load()`` reads the conductances into memory. ``path`` may also be a run
    id from the catalog (or a unique prefix of one)."""
    from pcmlab.store import RunReader

    file = Path(path)
    if not file.exists():  # a run id, perhaps: only then the catalog (and its SQL layer)
        from pcmlab.catalog.history import run_path

        file = run_path(path)
    run = RunReader(file)
    try:
        ds = run_dataset(run)
    except BaseException:
        run.close()
        raise
    ds.set_close(run.close)
    return ds


CHUNK_BYTES = 16 << 20  # readouts per dask chunk: about this many bytes of conductances


def _lazy_rows(rows: Any, n: int) -> Any:
    """The first ``n`` rows of an h5py dataset as a dask array chunked by readout (a few
    rows per chunk, ``CHUNK_BYTES``), read only when computed."""
    import dask.array as da

    n_cells = int(rows.shape[1])
    if n == 0:
        return np.zeros((0, n_cells), dtype=rows.dtype)
    per_chunk = int(max(1, min(n, CHUNK_BYTES // max(1, rows.dtype.itemsize * n_cells))))
    # fancy=False: dask asks the h5py dataset for slices only; name: one per opening
    return da.from_array(rows, chunks=(per_chunk, n_cells), fancy=False,
                         name=f"conductance_us-{uuid.uuid4().hex}")[:n]


def run_dataset(run: RunReader) -> xr.Dataset:
    """The dataset of an open ``RunReader`` (see ``open_run``); its conductances are read
    from the reader's file, so it is valid while the reader is open."""
    xr = _xarray()
    targets = run.targets()
    prog = run.programming()
    times = run.readout_times()
    n_readouts = int(times["time_s"].size)
    groups = group_levels(targets.conductance_us)
    level = np.full(targets.cell.size, np.nan)
    known = groups.index >= 0
    level[known] = groups.mean_target_us[groups.index[known]]
    cell_coords: dict[str, Any] = {
        "cell": ("cell", targets.cell, {"long_name": "flat cell index row * cols + col"}),
        "target_us": ("cell", targets.conductance_us,
                      {"units": "µS", "long_name": "programming target"}),
        "level": ("cell", level, {
            "units": "µS", "long_name": "target level: the target itself for exact levels, "
            "the bin's mean target for continuous targets", "grouping": groups.describe()}),
        "layer": ("cell", targets.layer, {"long_name": "network layer (-1: not a network's)"}),
    }
    geometry = run.geometry
    if geometry is not None:
        cols = int(geometry["cols"])
        cell_coords["row"] = ("cell", (targets.cell // cols).astype(np.int64),
                              {"long_name": "word line"})
        cell_coords["col"] = ("cell", (targets.cell % cols).astype(np.int64),
                              {"long_name": "bit line"})
    data: dict[str, Any] = {
        "conductance_us": (("readout", "cell"),
                           _lazy_rows(run.conductance_rows(), n_readouts),
                           {"units": "µS", "long_name": "conductance read"}),
        "chip_time_s": ("readout", times["chip_time_s"], {"units": "s", "long_name": "chip clock"}),
        "wall_time": ("readout", times["wall_time"],
                      {"units": "s", "long_name": "Unix time (seconds since 1970-01-01 UTC)"}),
        "schedule_time_s": ("planned", run.schedule_time_s,
                            {"units": "s", "long_name": "planned read time after programming"}),
    }
    if prog is not None:
        data.update({
            "programmed_us": ("cell", prog.conductance_us,
                              {"units": "µS", "long_name": "final verify reading"}),
            "iterations": ("cell", prog.iterations.astype(np.int64),
                           {"long_name": "program-and-verify iterations"}),
            "converged": ("cell", prog.converged, {"long_name": "within tolerance at the end"}),
            "last_pulse_s": ("cell", prog.last_pulse_s,
                             {"units": "s", "long_name": "chip clock at the last pulse"}),
        })
    coords: dict[str, Any] = {
        **cell_coords,
        "time_s": ("readout", times["time_s"],
                   {"units": "s", "long_name": "time since the end of programming"}),
    }
    attrs: dict[str, Any] = {
        "schema": str(run.file.attrs.get("schema", "")),
        "pcmlab_version": run.pcmlab_version, "created": run.created,
        "driver": run.driver_identity, "config": json.dumps(run.config, sort_keys=True),
        "interruptions": json.dumps(run.interruptions), "source": str(run.path),
        "programming_finished": int(prog is not None),
        "programming_interrupted": int(bool(prog and prog.interrupted)),
        "end_chip_time_s": np.nan if prog is None else prog.end_chip_time_s,
        "readouts_planned": int(run.schedule_time_s.size),
    }
    if geometry is not None:
        attrs.update({k: int(v) for k, v in geometry.items()})
    evaluation = run.evaluation()
    if evaluation is not None:
        _add_evaluation(data, coords, attrs, evaluation)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _add_evaluation(data: dict[str, Any], coords: dict[str, Any], attrs: dict[str, Any],
                    ev: dict[str, Any]) -> None:
    """A deployment's accuracy over time, on dimensions of its own."""
    if "measured_time_s" in ev:
        coords["measured_time_s"] = ("measured_time_s", ev["measured_time_s"], {"units": "s"})
        data["measured_accuracy"] = ("measured_time_s", ev["measured_accuracy"],
                                     {"units": "1", "long_name": "metric from the readouts"})
    if "simulated_time_s" in ev:
        coords["simulated_time_s"] = ("simulated_time_s", ev["simulated_time_s"],
                                      {"units": "s"})
        for name in ("simulated_accuracy_mean", "simulated_accuracy_std"):
            if name in ev:
                data[name] = ("simulated_time_s", ev[name], {"units": "1"})
        if "simulated_accuracy_runs" in ev:
            data["simulated_accuracy_runs"] = (("simulated_run", "simulated_time_s"),
                                               ev["simulated_accuracy_runs"], {"units": "1"})
    if "chip_time_s" in ev:  # chip mode; "chip_time_s" is the readouts' chip clock here
        coords["chip_mode_time_s"] = ("chip_mode_time_s", ev["chip_time_s"], {
            "units": "s", "long_name": "time since the end of programming (chip mode)"})
        for key, value in ev.items():
            if key.startswith("chip_") and key != "chip_time_s" and np.ndim(value) == 1:
                data[key] = ("chip_mode_time_s", value, {
                    "units": "1", "long_name": f"metric through the chip's MVM, "
                    f"{key.removeprefix('chip_').replace('_', ' ')}"})
    for key, value in ev.items():
        if np.isscalar(value) and key not in data:
            attrs[f"evaluation_{key}"] = value


def _need_programming(ds: xr.Dataset) -> None:
    if "converged" not in ds:
        raise ConfigError(f"{ds.attrs.get('source', 'this run')}: programming never "
                          "finished, so there is nothing to tabulate")


def _table(rows: list[LevelStats] | list[DriftStats]) -> xr.Dataset:
    xr = _xarray()
    if not rows:
        return xr.Dataset(coords={"level": ("level", np.zeros(0))})
    fields = [f for f in rows[0].__dataclass_fields__ if f not in ("target_us", "label")]
    data = {f: ("level", np.array([np.nan if getattr(r, f) is None else getattr(r, f)
                                   for r in rows])) for f in fields}
    coords = {"level": ("level", np.array([r.target_us for r in rows]), {"units": "µS"}),
              "label": ("level", np.array([r.label for r in rows]))}
    return xr.Dataset(data, coords=coords)


def level_convergence(ds: xr.Dataset, model: PCMModel | None = None) -> xr.Dataset:
    """Programming per target level (as ``pcmlab inspect`` shows it), dimension ``level``:
    cells, converged_fraction, iterations_p50/p90, error_mean_us/error_std_us (verify
    reading minus target, converged cells) and sigma_prog_us (the model); t0_std_us, the
    RMS of the readout nearest t0 minus the target (converged cells), beside
    t0_model_std_us, the model's spread of a read at that time. The table's attribute
    ``t0_readout_time_s`` says which readout that was (NaN: none within a factor 1.5 of
    t0, and those two columns NaN)."""
    _need_programming(ds)
    model = model or PCMModel()
    k = _t0_readout(ds["time_s"].values, model.calibration.t0_s)
    g_t0 = t0_s = None
    if k is not None:
        g_t0 = ds["conductance_us"].isel(readout=k).values
        t0_s = float(ds["time_s"].values[k])
    rows = convergence_by_level(ds["target_us"].values, ds["programmed_us"].values,
                                ds["converged"].values, ds["iterations"].values,
                                g_t0_us=g_t0, t0_s=t0_s, model=model)
    table = _table(rows)
    table.attrs["t0_readout_time_s"] = np.nan if t0_s is None else t0_s
    return table


T0_READOUT_FACTOR = 1.5  # a readout this close to t0 (as a ratio of times) counts as at t0


def _t0_readout(time_s: np.ndarray, t0_s: float) -> int | None:
    """The readout nearest t0 (in log time), if one lies within ``T0_READOUT_FACTOR``."""
    if not time_s.size or not np.isfinite(time_s).any():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(np.log(time_s / t0_s))
    k = int(np.nanargmin(distance))
    return k if distance[k] <= np.log(T0_READOUT_FACTOR) else None


def level_drift(ds: xr.Dataset, model: PCMModel | None = None) -> xr.Dataset:
    """Drift per non-zero target level over the converged cells, dimension ``level``: the
    mean conductance at the first and last readout and the drift exponent fitted per
    device (mean, median, std), beside the model's mu_nu and sigma_nu."""
    _need_programming(ds)
    rows = drift_by_level(ds["target_us"].values, ds["time_s"].values,
                          ds["conductance_us"].data, mask=ds["converged"].values,
                          model=model)
    return _table(rows)


def drift_exponents(ds: xr.Dataset, t_min_s: float | None = None) -> xr.DataArray:
    """The drift exponent nu of every cell (least squares of ln G on ln t over the
    readouts at or after ``t_min_s``, default the model's t0 = 20 s), dimension ``cell``."""
    t_min = PCMModel().calibration.t0_s if t_min_s is None else t_min_s
    nu, _ = fit_drift(ds["time_s"].values, ds["conductance_us"].data, t_min_s=t_min)
    out = ds["target_us"].copy(data=nu)
    out.name = "nu"
    out.attrs = {"units": "1", "long_name": "drift exponent, G = G0 (t / t0)^-nu",
                 "t_min_s": t_min}
    return out


def accuracy_over_time(ds: xr.Dataset) -> xr.Dataset:
    """A deployment's accuracy over time: measured (from each readout), the simulated
    mean and std (Monte Carlo over the PCM model) and, for chip mode, the ``chip_*``
    columns, each on its own time dimension."""
    names = [n for n in ("measured_accuracy", "simulated_accuracy_mean",
                         "simulated_accuracy_std") if n in ds]
    names += [n for n in ds.data_vars if str(n).startswith("chip_")
              and ds[n].dims == ("chip_mode_time_s",)]
    if not names:
        raise ConfigError(f"{ds.attrs.get('source', 'this run')}: no accuracy in this file; "
                          "it is not an evaluated network deployment")
    return ds[names]
