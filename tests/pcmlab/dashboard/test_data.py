"""What the pages show, computed from a run's file: checked against plain numpy."""

from __future__ import annotations

import numpy as np

from pcmlab.analysis import group_levels
from pcmlab.dashboard.data import RunData, array_fill
from pcmlab.store import RunWriter


def _run(path, rows=16, cols=32, readouts=4, seed=3):
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(rows * cols, 300, replace=False)).astype(np.uint32)
    target = rng.choice([0.0, 4.0, 9.0, 17.0], cells.size).astype(np.float32)
    converged = rng.random(cells.size) > 0.2
    w = RunWriter.create(path, config={}, driver_identity="t,T,1,0", cells=cells,
                         target_us=target, schedule_time_s=np.geomspace(20, 2e4, readouts + 2),
                         geometry={"rows": rows, "cols": cols, "arrays": 1}, register=False)
    w.write_programming(conductance_us=target, iterations=np.ones(cells.size, np.uint16),
                        converged=converged, last_pulse_s=np.zeros(cells.size),
                        end_chip_time_s=0.0, interrupted=False)
    g = (target[None] * (1 + 0.05 * rng.standard_normal((readouts, cells.size)))
         ).astype(np.float32)
    times = np.geomspace(20, 2e4, readouts + 2)[:readouts]
    for i in range(readouts):
        w.append_readout(float(times[i]), 0.0, 0.0, g[i])
    w.close()
    return cells, target, converged, g, times


def test_level_statistics_and_heatmap_agree_with_numpy(tmp_path):
    cells, target, converged, g, times = _run(tmp_path / "r.h5")
    d = RunData(tmp_path / "r.h5")
    try:
        assert d.n_readouts == 4 and d.time_s == list(times)
        groups = group_levels(target)
        for k in range(len(groups)):
            sel = (groups.index == k) & converged
            want_mean = g[:, sel].astype(np.float64).mean(axis=1)
            want_std = g[:, sel].astype(np.float64).std(axis=1)
            np.testing.assert_allclose([m[k] for m in d.level_mean_us], want_mean, rtol=1e-9)
            np.testing.assert_allclose([s[k] for s in d.level_std_us], want_std, rtol=1e-6,
                                       atol=1e-9)
        img = d.image(1)
        assert img.shape == (16, 32)
        rows, cols = np.divmod(cells, 32)
        np.testing.assert_array_equal(img[rows, cols], g[1])
        others = np.ones(16 * 32, bool)
        others[cells] = False
        assert np.isnan(img.ravel()[others]).all()
        assert [s.label for s in d.drift()] == ["4", "9", "17"]  # zero has no drift fit
        assert [f.cells_used for f in array_fill(d.cell, d.geometry)] == [300]
    finally:
        d.close()


APPEND = "import h5py, sys; h5py.File(sys.argv[1], 'a').close(); print('ok')"


def test_an_open_page_never_locks_a_writer_out(tmp_path, live_writer):
    import subprocess
    import sys

    _run(tmp_path / "done.h5")
    live, writer = live_writer("live.h5", readouts=3, first=1)
    pages = [RunData(tmp_path / "done.h5"), RunData(live)]
    try:
        assert pages[1].live and not pages[0].live
        writer.next()
        writer.next()
        writer.close()  # the run ends while its page is open; now e.g. deploy appends
        assert pages[1].poll() == [1, 2]
        for path in (tmp_path / "done.h5", live):
            out = subprocess.run([sys.executable, "-c", APPEND, str(path)],
                                 capture_output=True, text=True, timeout=60)
            assert out.stdout.strip() == "ok", out.stderr[-400:]
    finally:
        for p in pages:
            p.close()


def test_sweep_curves_are_the_chosen_slice():
    import xarray as xr

    from pcmlab.dashboard.pages.sweep import sweep_curves

    rng = np.random.default_rng(0)
    mean = rng.random((3, 2, 4))
    ds = xr.Dataset({"accuracy_mean": (("bits", "training", "time"), mean),
                     "accuracy_std": (("bits", "training", "time"), mean / 10)},
                    coords={"bits": [8, 6, 4], "training": ["noise", "full"],
                            "time_s": ("time", [25.0, 3600.0, 86400.0, 3e7])})
    out = sweep_curves(ds, "bits", {"bits": "8", "training": "full"})
    assert out["label"] == ["bits = 8", "bits = 6", "bits = 4"]
    for k in range(3):
        np.testing.assert_allclose(out["ys"][k], 100 * mean[k, 1])
        np.testing.assert_allclose(out["band_ys"][k][:4], 100 * (mean[k, 1] - mean[k, 1] / 10))
    out = sweep_curves(ds, "training", {"bits": "6", "training": "noise"})
    np.testing.assert_allclose(out["ys"][0], 100 * mean[1, 0])


def _page_text(data, name: str) -> str:
    from bokeh.document import Document
    from bokeh.models import Div

    from pcmlab.dashboard.pages.run import RunPage

    doc = Document()
    RunPage(doc, data, Div())
    return doc.select_one({"name": name}).text


def test_the_model_beside_a_run_is_the_calibration_its_file_records(tmp_path):
    from pcmlab.pcm_model import PCMCalibration

    # a chip whose fitted drift is six times the published one (nu = 0.3 at every level)
    fitted = PCMCalibration(drift_mu_coeffs=(0.0, 0.3), drift_mu_range=(0.3, 0.3),
                            drift_sigma_coeffs=(0.0, 0.01), drift_sigma_range=(0.01, 0.01),
                            t0_s=40.0).model_dump(mode="json")
    rng = np.random.default_rng(5)
    cells = np.arange(2000, dtype=np.uint32)
    target = rng.choice([5.0, 10.0, 20.0], cells.size).astype(np.float32)
    times = np.geomspace(40, 4e5, 5)
    for name, config in (("chip", {"chip": {"calibration": fitted}}),
                         ("deploy", {"calibration": fitted, "chip": {}}),
                         ("none", {})):
        w = RunWriter.create(tmp_path / f"{name}.h5", config=config, driver_identity="t,T,1,0",
                             cells=cells, target_us=target, schedule_time_s=times,
                             geometry={"rows": 40, "cols": 50, "arrays": 1}, register=False)
        w.write_programming(conductance_us=target, iterations=np.ones(cells.size, np.uint16),
                            converged=np.ones(cells.size, bool),
                            last_pulse_s=np.zeros(cells.size), end_chip_time_s=0.0,
                            interrupted=False)
        for t in times:  # measured: drifting with nu = 0.3 from t0 = 40 s
            w.append_readout(float(t), 0.0, 0.0, (target * (t / 40.0) ** -0.3).astype(
                np.float32))
        w.close()
    for name in ("chip", "deploy"):
        d = RunData(tmp_path / f"{name}.h5")
        try:
            assert d.model.calibration.model_dump(mode="json") == fitted
            for c in d.model_curves():
                late = c.model_time_s[-1]
                want = c.target_us * (late / 40.0) ** -0.3
                assert abs(c.model_mean_us[-1] - want) < 0.05 * want, (name, c.label)
            nu = d.drift()
            assert [round(s.model_nu_mean, 6) for s in nu] == [0.3, 0.3, 0.3]
            assert all(abs(s.nu_mean - 0.3) < 0.01 for s in nu)  # beside what was measured
            text = _page_text(d, "model_origin")
            assert "calibration the file records" in text and "published" not in text
        finally:
            d.close()
    d = RunData(tmp_path / "none.h5")
    try:  # no calibration in the file: the published one, and the page says so
        assert d.model.calibration == PCMCalibration()
        assert "published PCM constants" in _page_text(d, "model_origin")
        assert all(abs(s.model_nu_mean - 0.3) > 0.15 for s in d.drift())
    finally:
        d.close()


def test_the_cell_pages_reads_take_no_hdf5_lock(tmp_path, catalog, monkeypatch):
    import subprocess
    import sys

    from pcmlab.store import RunReader
    from tests.pcmlab.dashboard.live_writer import write_run

    path = tmp_path / "done.h5"
    write_run(path, rows=8, cols=16)  # registered in this test's catalog, chip serial 1

    def writer_opens() -> str:  # another process opening the file for writing, now
        out = subprocess.run([sys.executable, "-c", APPEND, str(path)],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or out.stderr.strip().splitlines()[-1]

    seen: list[str] = []
    real = RunReader.targets

    def targets(self):  # called while the history has the file open
        seen.append(writer_opens())
        return real(self)

    monkeypatch.setattr(RunReader, "targets", targets)
    ds = catalog.cell_history("1", 5)
    assert ds.sizes["run"] == 1 and ds.sizes["read"] == 3
    assert seen == ["ok"]
    with RunReader(path):  # any other reader still locks as HDF5 does by default
        assert writer_opens() != "ok"


def test_pages_of_one_run_share_one_reading_and_each_gets_every_readout(live_writer):
    from bokeh.document import Document
    from bokeh.models import Div

    from pcmlab.dashboard.data import SharedRuns
    from pcmlab.dashboard.pages.run import RunPage

    shared = SharedRuns()  # a server's
    live, writer = live_writer("live.h5", readouts=5, first=2)
    first = shared.acquire(live)
    pages = [RunPage(Document(), first, Div())]
    writer.next()
    pages[0].poll()  # the first page takes readout 3 before the second page opens
    again = shared.acquire(live)
    assert again is first and again.n_readouts == 3  # nothing read twice
    pages.append(RunPage(Document(), again, Div()))
    writer.next()
    for page in pages:  # the first to poll reads the row; the other must still draw it
        page.poll()
    for page in pages:
        assert page.status.text.startswith("readouts: 4 of 5")
        assert sorted(set(page.level_source.data["time_s"])) == first.time_s
        assert page.slider.value == 4
    shared.release(first)
    assert first.reader.file.id.valid  # one page still has it open
    shared.release(again)
    assert not first.reader.file.id.valid and len(shared) == 0
    shared.acquire(live)
    shared.close_all()  # the server stops: every file it had open is closed
    assert len(shared) == 0


def test_a_chip_group_is_drawn_per_chip(tmp_path):
    # a group of 2 chips of 16 x 32 records rows=32 (stacked), arrays=2 (drivers/group.py)
    cells = np.array([0, 5, 511, 512, 600, 1000, 1023], np.uint32)  # 3 on chip 0, 4 on 1
    fill = array_fill(cells.astype(np.intp), {"rows": 32, "cols": 32, "arrays": 2})
    assert [(f.array, f.cells_used, f.cells_total) for f in fill] == [(0, 3, 512),
                                                                      (1, 4, 512)]
    path = tmp_path / "group.h5"
    w = RunWriter.create(path, config={}, driver_identity="a,M,SN1,1 | a,M,SN2,1",
                         cells=cells, target_us=np.full(cells.size, 5, np.float32),
                         schedule_time_s=np.array([20.0, 40.0]),
                         geometry={"rows": 32, "cols": 32, "arrays": 2}, register=False)
    w.close()
    d = RunData(path)
    try:
        assert d.shape == (32, 32)  # the two chips' rows, not 2 x 32
    finally:
        d.close()
