"""Grouping cells into target levels: exact levels as programmed, continuous targets in
bins chosen from the data; the model columns at each row's own targets."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import MockChipConfig
from pcmlab.analysis import convergence_by_level, drift_by_level, group_levels
from pcmlab.config import validate_model
from pcmlab.pcm_model import PCMModel
from pcmlab.plots import drift_curves
from pcmlab.store import RunReader
from protocols.experiment import RunConfig, measure_run

OFF_GRID = [2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0, 23.0]  # not on a 2.5 µS grid


def test_off_grid_levels_are_reported_as_programmed(tmp_path: Path) -> None:
    config = validate_model(RunConfig, {
        "chip": {"geometry": {"rows": 64, "cols": 64}, "seed": 2},
        "targets": {"kind": "levels", "cells": 4000, "levels_us": [0.0, *OFF_GRID]},
        "schedule": {"t0_s": 20.0, "t_end_s": 1e5, "n_readouts": 6},
    })
    path = tmp_path / "run.h5"
    measure_run(MockDriver(config=validate_model(MockChipConfig, config.chip)), config,
                   path)
    model = PCMModel()
    with RunReader(path) as run:
        target = run.targets().conductance_us
        prog = run.programming()
        ro = run.readouts()
    groups = group_levels(target)
    assert not groups.binned and groups.mean_target_us.tolist() == [0.0, *OFF_GRID]
    rows = convergence_by_level(target, prog.conductance_us, prog.converged, prog.iterations)
    assert [r.target_us for r in rows] == [0.0, *OFF_GRID]
    for r in rows:
        sel = target == np.float32(r.target_us)
        assert r.cells == int(sel.sum())  # every cell of the level, none of another
        assert r.sigma_prog_us == pytest.approx(float(model.prog_noise_sigma_us(r.target_us)))
        assert r.label == f"{r.target_us:g}"
    drift = drift_by_level(target, ro.time_s, ro.conductance_us, mask=prog.converged)
    assert [d.target_us for d in drift] == OFF_GRID
    for d in drift:
        assert d.model_nu_mean == pytest.approx(float(model.drift_nu_mean(d.target_us)))
        assert d.model_nu_std == pytest.approx(float(model.drift_nu_std(d.target_us)))
    labels = [c[0] for c in drift_curves(target, prog.converged, ro.conductance_us)]
    assert labels == [f"{v:g} µS" for v in OFF_GRID]
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first_cells = [line.split("│")[1].strip() for line in proc.stdout.splitlines()
                   if line.count("│") > 5]
    assert first_cells[:9] == ["0", *[f"{v:g}" for v in OFF_GRID]]  # programming table
    assert "9 exact target levels, as programmed" in proc.stdout


def test_continuous_targets_are_binned_with_edges_from_the_data() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, 20_000)
    target = np.concatenate([np.maximum(w, 0), np.maximum(-w, 0)]) * 8  # G+ then G−
    groups = group_levels(target)
    assert groups.binned
    assert groups.low_us[0] == groups.high_us[0] == 0  # exact zero apart
    counts = np.bincount(groups.index, minlength=len(groups))
    assert counts[0] == int((target == 0).sum())
    assert counts[1:].max() - counts[1:].min() <= 1  # quantile bins: equal counts
    for k in range(len(groups)):
        sel = groups.index == k
        assert groups.mean_target_us[k] == pytest.approx(target[sel].mean())
        assert groups.low_us[k] == target[sel].min() and groups.high_us[k] == target[sel].max()
    assert f"{groups.edges_us[1]:.3g}" in groups.describe()
    model = PCMModel()
    g = target + rng.normal(0, 0.1, target.size)
    rows = convergence_by_level(target, g, np.ones(target.size, bool),
                                np.ones(target.size, int))
    for k, r in enumerate(rows):
        sel = groups.index == k
        assert r.target_us == pytest.approx(target[sel].mean())
        rms = np.sqrt(np.mean(model.prog_noise_sigma_us(target[sel]) ** 2))
        assert r.sigma_prog_us == pytest.approx(rms)


def test_nan_targets_belong_to_no_level() -> None:
    groups = group_levels([1.0, np.nan, 1.0, 3.0])
    assert groups.index.tolist() == [0, -1, 0, 1]
    assert groups.mean_target_us.tolist() == [1.0, 3.0]


def _centred_fit(t: np.ndarray, g: np.ndarray, t_min_s: float):
    """The two-pass centred least squares fit_drift computed before it read by rows."""
    use = t >= t_min_s
    x = np.log(t[use])[:, None]
    y = g[use].astype(np.float64)
    w = (y > 0).astype(np.float64)
    y = np.log(np.where(w > 0, y, 1.0))
    n = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm, ym = (w * x).sum(axis=0) / n, (w * y).sum(axis=0) / n
        dx = (x - xm) * w
        sxx = (dx * (x - xm)).sum(axis=0)
        slope = (dx * (y - ym)).sum(axis=0) / sxx
        resid = (y - ym - slope * (x - xm)) * w
        var = (resid**2).sum(axis=0) / (n - 2) / sxx
    slope[n < 2] = np.nan
    var[n < 3] = np.nan
    return -slope, var


def test_fit_drift_by_blocks_of_rows_is_the_centred_fit(tmp_path: Path, monkeypatch) -> None:
    """fit_drift reads readouts a block of rows at a time (numpy, h5py, dask alike) and
    gives the numbers of the centred fit: readings <= 0 left out, rows before t_min too."""
    import dask.array as da
    import h5py

    import pcmlab.analysis as analysis

    rng = np.random.default_rng(3)
    t = np.concatenate([[5.0, 10.0], np.geomspace(20, 3e7, 40)])
    nu = np.abs(rng.normal(0.06, 0.02, 3000))
    g = (rng.uniform(1, 25, 3000) * (t[:, None] / 20) ** -nu
         + rng.normal(0, 0.3, (t.size, 3000))).astype(np.float32)
    g[:, :50] = np.where(g[:, :50] > 5, g[:, :50], -1.0)  # some readings <= 0
    g[3:, 50] = 0.0  # one cell with a single valid reading: NaN
    want_nu, want_var = _centred_fit(t, g, 20.0)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["g"] = g
    monkeypatch.setattr(analysis, "ROW_BLOCK_BYTES", 7 * 3000 * 4)  # 7 rows a block
    with h5py.File(tmp_path / "g.h5", "r") as f:
        for rows in (g, f["g"], da.from_array(g, chunks=(5, 3000))):
            got_nu, got_var = analysis.fit_drift(t, rows, t_min_s=20.0)
            np.testing.assert_array_equal(np.isnan(got_nu), np.isnan(want_nu))
            np.testing.assert_allclose(got_nu, want_nu, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(got_var, want_var, rtol=1e-6, atol=1e-15)
    assert np.isnan(want_nu[50]) and np.isfinite(want_nu[:50]).sum() > 25  # data as meant
