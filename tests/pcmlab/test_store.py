"""The measurement store: layout, reader validation, live SWMR reading, resume by copy."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pcmlab.errors import ConfigError, SchemaError
from pcmlab.store import SCHEMA, RunReader, RunWriter


def make_run(path: Path, n_cells: int = 8, rows: int = 3) -> None:
    w = RunWriter.create(path, config={"k": 1}, driver_identity="maker,model,1,fw",
                         cells=np.arange(n_cells), target_us=np.linspace(0, 20, n_cells),
                         schedule_time_s=np.geomspace(20, 1000, rows + 2))
    w.write_programming(conductance_us=np.linspace(0, 20, n_cells),
                        iterations=np.arange(n_cells), converged=np.ones(n_cells, bool),
                        last_pulse_s=np.zeros(n_cells), end_chip_time_s=5.0, interrupted=False)
    for i in range(rows):
        w.append_readout(20.0 * (i + 1), 25.0 + 20 * i, 1.7e9 + i,
                         np.full(n_cells, i, np.float32))
    w.close()


def test_layout_is_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    make_run(path)
    with h5py.File(path, "r") as f:  # read without pcmlab, by the schema's names
        assert f.attrs["schema"] == SCHEMA
        assert json.loads(f.attrs["config"]) == {"k": 1}
        assert f.attrs["driver"] == "maker,model,1,fw"
        assert "T" in f.attrs["created"] and f.attrs["pcmlab_version"]
        assert f["targets/cell"].dtype == np.uint32
        assert f["targets/conductance_us"].dtype == np.float32
        assert f["targets/layer"].dtype == np.int16 and (f["targets/layer"][...] == -1).all()
        assert f["programming/iterations"].dtype == np.uint16
        assert f["programming/converged"][...].all()
        assert f["programming/last_pulse_s"].dtype == np.float64
        g = f["readouts/conductance_us"]
        assert g.shape == (3, 8) and g.chunks == (1, 8) and g.maxshape == (None, 8)
        np.testing.assert_array_equal(f["readouts/time_s"][...], [20, 40, 60])
        assert f["readouts/chip_time_s"].shape == f["readouts/wall_time"].shape == (3,)


def test_reader_typed_access(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    make_run(path)
    with RunReader(path) as run:
        assert run.n_readouts == 3
        ro = run.readouts()
        assert ro.conductance_us.dtype == np.float32 and ro.conductance_us[2, 0] == 2
        assert run.readouts(1).n == 2
        prog = run.programming()
        assert prog is not None and prog.end_chip_time_s == 5.0 and not prog.interrupted
        assert run.schedule_time_s.size == 5


def test_xarray_view(tmp_path: Path) -> None:
    import xarray as xr

    from pcmlab.dataset import run_dataset

    path = tmp_path / "run.h5"
    make_run(path)
    with RunReader(path) as run:  # the view reads the conductances while the reader is open
        ds = run_dataset(run)
        assert ds["conductance_us"].dims == ("readout", "cell")
        np.testing.assert_array_equal(ds["time_s"].values, [20, 40, 60])
        by_time = ds.swap_dims(readout="time_s")
        assert float(by_time["conductance_us"].sel(time_s=40.0, cell=3)) == 1.0
    # the file itself, in xarray without pcmlab: real dimension scales, no phony dims
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = xr.open_dataset(path, group="readouts", engine="h5netcdf")
        assert raw["conductance_us"].dims == ("time_s", "cell")
        assert float(raw["conductance_us"].sel(time_s=40.0, cell=3)) == 1.0
        raw.close()


def test_half_written_row_is_not_a_readout(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    make_run(path)
    with h5py.File(path, "r+") as f:  # as a writer killed before time_s leaves a row:
        for name in ("time_s", "chip_time_s", "wall_time"):  # every dataset one longer
            f["readouts"][name].resize((4,))
        f["readouts/conductance_us"].resize(4, axis=0)
        f["readouts/conductance_us"][3] = 9.0
        f["readouts/chip_time_s"][3] = 99.0
        assert np.isnan(f["readouts/time_s"][3])  # the fill value marks the row
    with RunReader(path) as run:
        assert run.n_readouts == 3
        assert run.readouts().conductance_us.shape == (3, 8)


def test_a_row_grows_in_every_dataset_at_once(tmp_path: Path, monkeypatch) -> None:
    """Whenever the writer flushes, the readout datasets have one length (the row being
    written has NaN time_s); checked at every flush of a real append."""
    path = tmp_path / "run.h5"
    make_run(path, rows=1)
    writer, _ = RunWriter.resume(path, {"reason": "test"})
    seen = []
    real_file, real_dataset = h5py.File.flush, h5py.Dataset.flush

    def lengths(f: h5py.File) -> None:
        r = f["readouts"]
        seen.append({k: r[k].shape[0] for k in ("time_s", "chip_time_s", "wall_time",
                                                "conductance_us")})

    def flush_file(f):
        real_file(f)
        lengths(f)

    def flush_dataset(ds):
        real_dataset(ds)
        lengths(ds.file)

    monkeypatch.setattr(h5py.File, "flush", flush_file)
    monkeypatch.setattr(h5py.Dataset, "flush", flush_dataset)
    writer.append_readout(60.0, 65.0, 1.7e9, np.full(8, 5, np.float32))
    monkeypatch.setattr(h5py.File, "flush", real_file)
    monkeypatch.setattr(h5py.Dataset, "flush", real_dataset)
    writer.close()
    assert seen and all(len(set(s.values())) == 1 for s in seen), seen


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    make_run(path)
    with pytest.raises(ConfigError, match="exists"):
        RunWriter.create(path, config={}, driver_identity="x", cells=[0], target_us=[1.0],
                         schedule_time_s=[1.0, 2.0])
    with RunReader(path) as run:
        assert run.n_readouts == 3


@pytest.mark.parametrize("case", ["missing", "text", "other-schema", "newer", "no-schema",
                                  "truncated", "incomplete"])
def test_bad_files_are_refused_clearly(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.h5"
    match = {
        "missing": "no such file", "text": "not an HDF5 file",
        "other-schema": "is not a pcmlab schema", "newer": "newer pcmlab",
        "no-schema": "no 'schema' attribute", "truncated": "corrupt or truncated",
        "incomplete": "missing /readouts",
    }[case]
    if case == "text":
        path.write_text("time,g\n1,2\n")
    elif case in ("other-schema", "newer", "no-schema"):
        with h5py.File(path, "w") as f:
            if case == "other-schema":
                f.attrs["schema"] = "nexus/3"
            elif case == "newer":
                f.attrs["schema"] = "pcmlab/2"
    elif case == "truncated":
        make_run(path, n_cells=20_000, rows=4)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "incomplete":
        make_run(path)
        with h5py.File(path, "r+") as f:
            del f["readouts/time_s"]
    with pytest.raises(SchemaError, match=match), RunReader(path) as run:
        run.readouts()


def test_resume_copies_completed_rows_and_records_interruption(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    make_run(path, rows=2)
    writer, done = RunWriter.resume(path, {"reason": "test"})
    assert done == 2
    writer.append_readout(100.0, 105.0, 1.7e9, np.full(8, 7, np.float32))
    writer.close()
    with RunReader(path) as run:
        assert run.n_readouts == 3
        np.testing.assert_array_equal(run.readouts().time_s, [20, 40, 100])
        assert run.interruptions == [{"reason": "test", "completed_readouts": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pcmlab.store import RunWriter
    path, n = sys.argv[1], int(sys.argv[2])
    w = RunWriter.create(path, config={}, driver_identity="live", cells=np.arange(1000),
                         target_us=np.ones(1000), schedule_time_s=np.arange(1, n + 1))
    w.write_programming(conductance_us=np.ones(1000), iterations=np.ones(1000),
                        converged=np.ones(1000, bool), last_pulse_s=np.zeros(1000),
                        end_chip_time_s=0.0, interrupted=False)
    print("swmr", flush=True)
    for i in range(n):
        time.sleep(0.25)
        w.append_readout(float(i + 1), float(i + 1), time.time(), np.full(1000, i, "f4"))
    w.close()
""")


@pytest.mark.slow
def test_second_process_sees_readouts_arrive(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    n = 12
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(n)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "swmr"
        seen = []
        with RunReader(path) as run:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run.refresh()
                count = run.n_readouts
                if not seen or count != seen[-1]:
                    seen.append(count)
                    if count:  # rows arrive whole
                        last = run.readouts(count - 1).conductance_us[0]
                        assert (last == count - 1).all()
                if count == n:
                    break
                time.sleep(0.05)
        assert seen[-1] == n
        # the reader watched the file grow while the writer was still writing
        assert len([c for c in seen if 0 < c < n]) >= 3
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_resume_keeps_permissions_and_clears_a_killed_resume(tmp_path: Path) -> None:
    import os
    import stat

    path = tmp_path / "run.h5"
    make_run(path, rows=2)
    os.chmod(path, 0o644)
    stale = tmp_path / "run.h5.abc123.resume"  # what a resume killed while copying leaves
    stale.write_bytes(b"half a copy")
    writer, _ = RunWriter.resume(path, {"reason": "test"})
    writer.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_xarray_opens_the_readouts_without_phony_dimensions(tmp_path: Path) -> None:
    import warnings

    xarray = pytest.importorskip("xarray")
    path = tmp_path / "run.h5"
    make_run(path, rows=2)  # 2 readouts of 4 planned: the schedule is longer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a phony dimension would warn
        ds = xarray.open_dataset(path, group="readouts", engine="h5netcdf")
    with ds:
        assert dict(ds.sizes) == {"time_s": 2, "cell": 8, "schedule_time_s": 4}
        assert ds["conductance_us"].dims == ("time_s", "cell")


def test_recover_keeps_every_group_and_attribute_of_a_killed_file(tmp_path: Path) -> None:
    """An /evaluation group (and a root attribute a user added) in a file a writer left
    marked open survive recover, value for value."""
    import subprocess
    import sys

    path = tmp_path / "run.h5"
    with RunWriter.create(path, config={"a": 1}, driver_identity="x", cells=[0, 1, 2],
                          target_us=[1.0, 2.0, 3.0], schedule_time_s=[20.0, 40.0]) as w:
        w.append_readout(20.0, 120.0, 1.7e9, np.array([1.5, 2.5, 3.5], np.float32))
    with h5py.File(path, "a") as f:
        f.create_group("evaluation").create_dataset("measured_accuracy", data=[0.97])
        f.attrs["operator"] = "jd"
    # a writer that dies with the file in SWMR write mode
    script = ("import h5py, os, signal, sys\n"
              "f = h5py.File(sys.argv[1], 'a', libver='latest')\n"
              "f.swmr_mode = True\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
    assert proc.returncode == -9
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    assert RunWriter.recover(path) == 1
    with h5py.File(path, "r") as f:
        assert f["evaluation/measured_accuracy"][()].tolist() == [0.97]
        assert f.attrs["operator"] == "jd"
        assert f["readouts/conductance_us"][0].tolist() == [1.5, 2.5, 3.5]
    assert RunWriter.recover(path) is None


def test_the_store_imports_none_of_its_views() -> None:
    """pcmlab/dataset.py (the xarray view) sits above pcmlab/store/: no module of the
    store imports it, or anything else of pcmlab but the store, the errors, the version
    and the catalog's registration interface (imports inside functions included), so
    there is no import circle; the registration interface imports nothing of the store."""
    import ast

    registration = {"pcmlab.catalog.registration", "pcmlab.catalog.records"}
    allowed = {"pcmlab", "pcmlab.errors", "pcmlab.filelock", *registration}
    root = Path(__file__).resolve().parents[2]

    def imports(module: str) -> list[str]:
        base = root / Path(*module.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        return [n for node in ast.walk(ast.parse(path.read_text()))
                for n in ([a.name for a in node.names] if isinstance(node, ast.Import)
                          else [node.module or ""] if isinstance(node, ast.ImportFrom)
                          else []) if n.startswith("pcmlab")]

    # everything the registration interface pulls in, transitively: never the store
    seen, todo = set(), list(registration)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imports(m)
    assert not [m for m in seen if m.startswith(("pcmlab.store", "pcmlab.dataset"))], seen
    store = Path(__file__).resolve().parents[2] / "pcmlab" / "store"
    found = []
    for module in sorted(store.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{module.name}: {n}" for n in names if n.startswith("pcmlab")
                      and not n.startswith("pcmlab.store") and n not in allowed]
    assert found == []


# writes two readouts, then waits (as for a readout hours away) until it is killed
BETWEEN_READOUTS = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pcmlab.store import RunWriter
    w = RunWriter.create(sys.argv[1], config={}, driver_identity="a,b,1,f",
                         cells=np.arange(16), target_us=np.ones(16),
                         schedule_time_s=[20.0, 200.0, 2000.0], register=False)
    w.write_programming(conductance_us=np.ones(16), iterations=np.ones(16),
                        converged=np.ones(16, bool), last_pulse_s=np.zeros(16),
                        end_chip_time_s=0.0, interrupted=False)
    for i, t in enumerate((20.0, 200.0)):
        w.append_readout(t, t, 1.7e9 + i, np.full(16, i, "f4"))
    print("waiting", flush=True)
    time.sleep(120)
""")


def test_a_run_killed_between_readouts_opens_without_recover(tmp_path: Path) -> None:
    import os
    import signal

    xarray = pytest.importorskip("xarray")
    path = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-c", BETWEEN_READOUTS, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    with h5py.File(path, "r") as f:  # plain h5py: no "already open for write"
        assert f["readouts/time_s"][:].tolist() == [20.0, 200.0]
        assert f["readouts/conductance_us"][1].tolist() == [1.0] * 16
    with xarray.open_dataset(path, group="readouts", engine="h5netcdf") as ds:
        assert ds["conductance_us"].shape == (2, 16)
    assert RunWriter.recover(path) is None  # nothing to recover: the file is closed


def test_not_even_overwrite_replaces_a_file_a_live_run_is_writing(tmp_path: Path) -> None:
    """Between readouts the writer has no HDF5 file open: create(overwrite=True) (what
    --force does) truncated a live run's file, and that run went on writing into nothing."""
    path = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-c", BETWEEN_READOUTS, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
        with pytest.raises(SchemaError, match="still writing"):
            RunWriter.create(path, config={}, driver_identity="a,b,1,f", cells=np.arange(4),
                             target_us=np.ones(4), schedule_time_s=[10.0], overwrite=True,
                             register=False)
        with h5py.File(path, "r") as f:  # the live run's readouts are all there
            assert f["readouts/time_s"][:].tolist() == [20.0, 200.0]
    finally:
        proc.kill()
        proc.wait()
    # once its writer is gone, --force may replace it
    RunWriter.create(path, config={}, driver_identity="a,b,1,f", cells=np.arange(4),
                     target_us=np.ones(4), schedule_time_s=[10.0], overwrite=True,
                     register=False).close()


def test_a_reader_in_the_writers_process_follows_it(tmp_path: Path) -> None:
    """The writer closes its file between readouts; a reader in the same process (a
    notebook measuring and looking) keeps it open and sees each new row."""
    path = tmp_path / "run.h5"
    w = RunWriter.create(path, config={}, driver_identity="a,b,1,f", cells=np.arange(4),
                         target_us=np.ones(4), schedule_time_s=[10.0, 20.0, 30.0],
                         register=False)
    w.write_programming(conductance_us=np.ones(4), iterations=np.ones(4),
                        converged=np.ones(4, bool), last_pulse_s=np.zeros(4),
                        end_chip_time_s=0.0, interrupted=False)
    w.append_readout(10.0, 10.0, 0.0, np.zeros(4))
    with RunReader(path) as run:
        assert run.n_readouts == 1
        w.append_readout(20.0, 20.0, 0.0, np.ones(4))
        run.refresh()
        assert run.n_readouts == 2 and run.readouts().conductance_us[1].tolist() == [1.0] * 4
    w.append_readout(30.0, 30.0, 0.0, np.full(4, 2.0))
    w.close()
    with h5py.File(path, "r") as f:
        assert f["readouts/time_s"][:].tolist() == [10.0, 20.0, 30.0]
