"""pcmlab.open_run: a run file as a lazy xarray Dataset, with every array of /evaluation."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest

import pcmlab
from pcmlab.dataset import CHUNK_BYTES
from pcmlab.store.evaluation import write_evaluation
from protocols.chip_inference import CHIP_COLUMNS
from tests.pcmlab.test_store import make_run


def test_open_run_shows_the_chip_mode_accuracy(tmp_path: Path) -> None:
    """/evaluation/chip_* (deploy --mvm, demo) as written by the deployment: every column
    over its own time axis, not only the scalars."""
    path = tmp_path / "run.h5"
    make_run(path, rows=3)
    rng = np.random.default_rng(0)
    chip = {name: rng.uniform(0.5, 1.0, 3) for name in CHIP_COLUMNS}
    chip["time_s"] = np.array([20.0, 40.0, 60.0])
    write_evaluation(path, measured_time_s=chip["time_s"], measured_accuracy=[0.9] * 3,
                     chip=chip)
    with pcmlab.open_run(path) as ds, h5py.File(path, "r") as f:
        np.testing.assert_array_equal(ds.chip_mode_time_s.values, f["evaluation/chip_time_s"])
        assert ds.chip_mode_time_s.attrs["units"] == "s"
        for name in CHIP_COLUMNS[1:]:
            var = ds[f"chip_{name}"]
            assert var.dims == ("chip_mode_time_s",) and var.attrs["units"] == "1"
            np.testing.assert_array_equal(var.values, f[f"evaluation/chip_{name}"][...])
        table = pcmlab.accuracy_over_time(ds)
        assert {f"chip_{n}" for n in CHIP_COLUMNS[1:]} <= set(table.data_vars)
        # the readouts' own chip clock is not replaced by the chip mode's times
        np.testing.assert_array_equal(ds.chip_time_s.values, f["readouts/chip_time_s"])


LIVE_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from pcmlab.store import RunWriter
    w = RunWriter.create(sys.argv[1], config={}, driver_identity="x", cells=np.arange(6),
                         target_us=np.arange(6.0), schedule_time_s=[20.0, 40.0, 80.0])
    w.write_programming(conductance_us=np.arange(6.0), iterations=np.ones(6),
                        converged=np.ones(6, bool), last_pulse_s=np.zeros(6),
                        end_chip_time_s=1.0, interrupted=False)
    for i in range(3):
        w.append_readout(20.0 * 2 ** i, 21.0, 1.7e9, np.arange(6, dtype=np.float32) + i)
        print("written", flush=True)
        sys.stdin.readline()
""")


def test_lazy_datasets_of_a_live_file_stay_right_beside_each_other(tmp_path: Path) -> None:
    """A notebook opens a live run, opens it again after another readout, and inspects it
    with a reader in between: every dataset keeps its own readouts with the right values
    (two handles of one dataset in a process, one of them refreshed, read zeros)."""
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(path)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "written"
        first = pcmlab.open_run(path)
        assert isinstance(first.conductance_us.data, da.Array)  # not read at opening
        np.testing.assert_array_equal(first.conductance_us.values[0], np.arange(6))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "written"
        second = pcmlab.open_run(path)
        with pcmlab.RunReader(path) as run:
            assert run.n_readouts == 2 and run.programming() is not None
        want = np.arange(6, dtype=np.float32) + np.arange(2)[:, None]
        np.testing.assert_array_equal(second.conductance_us.values, want)
        np.testing.assert_array_equal(first.conductance_us.values, want[:1])
        assert first.sizes["readout"] == 1 and second.time_s.values.tolist() == [20.0, 40.0]
        first.close()
        np.testing.assert_array_equal(second.conductance_us.values, want)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    second.close()
    killed = pcmlab.open_run(path)  # the killed writer's file, lazily too
    np.testing.assert_array_equal(killed.conductance_us.values, want)
    killed.close()


def test_open_run_reads_no_conductance_until_asked(tmp_path: Path) -> None:
    """The conductances are a dask array over the file, chunked by readout (whole rows of
    at most CHUNK_BYTES); a selection reads its rows only, and the file closes with the
    dataset."""
    path = tmp_path / "run.h5"
    make_run(path, n_cells=4096, rows=12)
    with pcmlab.open_run(path) as ds:
        g = ds.conductance_us.data
        assert isinstance(g, da.Array) and g.chunks[1] == (4096,)
        assert max(g.chunks[0]) * 4096 * 4 <= CHUNK_BYTES
        assert float(ds.conductance_us.isel(readout=7, cell=5)) == 7.0
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(ds.conductance_us.values,
                                          f["readouts/conductance_us"][...])
    with pytest.raises(Exception):  # noqa: B017  (closed: h5py's own error)
        ds.conductance_us.values  # noqa: B018


def test_opening_a_run_file_loads_no_catalog(tmp_path: Path) -> None:
    """open_run of a file path and the per-level analyses leave the catalog (and its SQL
    layer, 0.3-0.4 s of imports) unloaded: only a run id needs it. In a fresh process, as
    a notebook opens its first run."""
    path = tmp_path / "run.h5"
    make_run(path, rows=3)
    code = textwrap.dedent(f"""
        import sys
        import pcmlab
        with pcmlab.open_run({str(path)!r}) as ds:
            ds.conductance_us.values
            pcmlab.level_convergence(ds)
        loaded = sorted(m for m in sys.modules
                        if m.startswith(("sqlalchemy", "pcmlab.catalog")))
        print(loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]", out.stdout
