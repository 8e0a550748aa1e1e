"""Whole runs: schedule, file, crash safety under SIGKILL, resume, drift on the mock chip."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import MockChipConfig
from pcmlab.analysis import fit_drift_exponents
from pcmlab.config import save_model, validate_model
from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMModel
from pcmlab.store import RunReader
from protocols.experiment import RunConfig, measure_run
from protocols.readout import ReadoutSchedule, run_schedule

RUN_TOML = """
resource = "mock"
[chip]
seed = 3
[chip.geometry]
rows = 32
cols = 64
[targets]
kind = "levels"
[schedule]
t0_s = 20.0
t_end_s = 1e6
n_readouts = 12
"""

# Runs `pcmlab run` and SIGKILLs itself right after the k-th HDF5 flush (k = 0: never;
# then it prints how many flushes the run made).
KILLER = textwrap.dedent("""
    import atexit, os, signal, sys
    import h5py
    config, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = 0
    def counting(original):
        def flush(self):
            global count
            original(self)
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return flush
    h5py.Dataset.flush = counting(h5py.Dataset.flush)
    h5py.File.flush = counting(h5py.File.flush)
    if kill_at == 0:
        atexit.register(lambda: print("flushes", count))
    from pcmlab.cli import main
    sys.exit(main(["run", config, "-o", out]))
""")


def pcmlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_schedule_validation() -> None:
    times = ReadoutSchedule(t0_s=20, t_end_s=2e6, n_readouts=6).times_s()
    np.testing.assert_allclose(times, np.geomspace(20, 2e6, 6))
    with pytest.raises(ConfigError, match=r"t_end_s=10\.0 must be after t0_s=20\.0"):
        validate_model(ReadoutSchedule, {"t_end_s": 10.0})
    with pytest.raises(ConfigError, match="n_readouts = 1"):
        validate_model(ReadoutSchedule, {"n_readouts": 1})


def test_late_readouts_are_taken_at_once_and_none_skipped() -> None:
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 4, "cols": 4}))
    driver.clock.advance(1000.0)  # the schedule's first three times are already past
    rows = []
    taken = run_schedule(driver, [10.0, 100.0, 500.0, 2000.0], 0.0,
                         lambda i, t, chip, wall, g: rows.append((i, t)))
    assert taken == 4
    assert [i for i, _ in rows] == [0, 1, 2, 3]
    # actual times recorded: the late ones at once (each read takes the mock's ~1 ms of
    # command time on its clock), the last one on time
    times = [t for _, t in rows]
    np.testing.assert_allclose(times, [1000.0, 1000.0, 1000.0, 2000.0], atol=0.01, rtol=0)
    assert times[3] >= 2000.0 and times == sorted(times)


def test_one_year_schedule_on_100k_cells_matches_drift_model(tmp_path: Path) -> None:
    config = validate_model(RunConfig, {
        "chip": {"geometry": {"rows": 256, "cols": 512}, "seed": 4},
        "targets": {"kind": "levels", "cells": 100_000},
        "schedule": {"t0_s": 20.0, "t_end_s": 3.15e7, "n_readouts": 30},
    })
    driver = MockDriver(config=validate_model(MockChipConfig, config.chip))
    path = tmp_path / "year.h5"
    result, taken = measure_run(driver, config, path)
    assert taken == 30
    model = PCMModel()
    with RunReader(path) as run:
        ro = run.readouts()
        targets = run.targets().conductance_us
        assert ro.conductance_us.shape == (30, 100_000)
        assert ro.time_s[-1] == pytest.approx(3.15e7)
        nu = fit_drift_exponents(ro.time_s, ro.conductance_us)
    for level in np.unique(targets[targets > 0]):
        sel = (targets == level) & result.converged
        assert np.median(nu[sel]) == pytest.approx(float(model.drift_nu_mean(level)),
                                                   rel=0.15), level


@pytest.mark.slow
def test_sigkill_at_many_points_then_resume(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    reference = tmp_path / "reference.h5"
    proc = subprocess.run([sys.executable, str(killer), str(config), str(reference), "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with RunReader(reference) as run:
        ref = run.readouts()
        schedule = run.schedule_time_s
    n = schedule.size
    # programming flushes first: the pulse counts after every pulse call (a kill
    # mid-programming keeps them), then 8 storing the results (4 arrays, the SET and
    # RESET pulse counts, interrupted flag, end time); then 3 per readout (every dataset
    # grown with time_s NaN; the values; time_s)
    total = int(proc.stdout.split("flushes")[-1])
    prog = total - 3 * n
    assert prog > 8 + 1  # a RESET call and a SET call at least
    kill_points = [1, 3, prog - 2, prog, *(prog + k for k in (1, 2, 3, 4, 9, 14, 20, 27, 34,
                                                               35))]
    for k in kill_points:
        out = tmp_path / f"killed-{k}.h5"
        proc = subprocess.run([sys.executable, str(killer), str(config), str(out), str(k)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, (k, proc.stderr)
        with RunReader(out) as run:
            kept = run.n_readouts
            assert kept == max(k - prog, 0) // 3  # only rows whose time_s was flushed count
            got = run.readouts()
            # every readout written before the kill is intact, bit for bit
            np.testing.assert_array_equal(got.conductance_us, ref.conductance_us[:kept])
            np.testing.assert_array_equal(got.time_s, ref.time_s[:kept])
        proc = pcmlab("resume", str(out))
        if k < prog:  # killed before programming was complete: nothing to resume
            assert proc.returncode == 2 and "programming never finished" in proc.stderr
            assert "Traceback" not in proc.stderr
            continue
        assert proc.returncode == 0, (k, proc.stderr)
        assert "Traceback" not in proc.stderr
        with RunReader(out) as run:
            ro = run.readouts()
            assert ro.n == n  # the schedule completed: no gap
            assert (np.diff(ro.time_s) > 0).all()  # no duplicate, in order
            assert (ro.time_s >= schedule - 1e-9).all()
            np.testing.assert_array_equal(ro.conductance_us[:kept], ref.conductance_us[:kept])
            assert [e["completed_readouts"] for e in run.interruptions] == [kept]
        assert not [p for p in tmp_path.iterdir() if p.suffix == ".resume"]


def test_resume_of_a_complete_run_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    out = tmp_path / "run.h5"
    assert pcmlab("run", str(config), "-o", str(out)).returncode == 0
    before = out.stat().st_mtime_ns
    proc = pcmlab("resume", str(out))
    assert proc.returncode == 0 and "12 readouts were there, 12 of 12 now" in proc.stdout
    assert out.stat().st_mtime_ns == before


def test_cli_inspect_and_plot(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    out = tmp_path / "run.h5"
    assert pcmlab("run", str(config), "-o", str(out)).returncode == 0
    proc = pcmlab("inspect", str(out))
    assert proc.returncode == 0
    assert "12 of 12" in proc.stdout and "drift per level" in proc.stdout
    proc = pcmlab("plot", str(out), "-o", str(tmp_path / "fig.png"))
    assert proc.returncode == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [("text", ["inspect", "{f}"], "not an HDF5 file"),
     ("other", ["inspect", "{f}"], "no 'schema' attribute"),
     ("text", ["resume", "{f}"], "not an HDF5 file"),
     ("text", ["plot", "{f}"], "not an HDF5 file"),
     ("bad-times", ["run", "{c}", "-o", "{f}"], "t_end_s=10.0 must be after t0_s=20.0"),
     ("one-readout", ["run", "{c}", "-o", "{f}"], "n_readouts = 1"),
     ("exists", ["run", "{c}", "-o", "{f}"], "exists")],
)
def test_cli_bad_input_is_one_clear_line(tmp_path: Path, setup: str, args: list[str],
                                         message: str) -> None:
    import h5py

    f = tmp_path / "x.h5"
    c = tmp_path / "run.toml"
    c.write_text(RUN_TOML)
    if setup == "text":
        f.write_text("hello")
    elif setup == "other":
        with h5py.File(f, "w") as h:
            h["data"] = [1, 2, 3]
    elif setup == "bad-times":
        c.write_text(RUN_TOML.replace("t_end_s = 1e6", "t_end_s = 10.0"))
    elif setup == "one-readout":
        c.write_text(RUN_TOML.replace("n_readouts = 12", "n_readouts = 1"))
    elif setup == "exists":
        f.write_text("precious")
    proc = pcmlab(*[a.format(f=f, c=c) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    if setup == "exists":
        assert f.read_text() == "precious"


def test_example_configuration_is_valid(tmp_path: Path) -> None:
    from pcmlab.config import load_model

    root = Path(__file__).resolve().parents[2]
    cfg = load_model(RunConfig, root / "examples" / "run.toml")
    assert cfg.schedule.n_readouts == 30
    save_model(cfg, tmp_path / "copy.json")
    assert os.path.getsize(tmp_path / "copy.json") > 0


def test_inspect_a_run_too_short_for_a_drift_fit(tmp_path: Path) -> None:
    config = tmp_path / "short.toml"
    config.write_text(RUN_TOML.replace("t0_s = 20.0", "t0_s = 1.0").replace(
        "t_end_s = 1e6", "t_end_s = 10.0"))
    out = tmp_path / "short.h5"
    assert pcmlab("run", str(config), "-o", str(out)).returncode == 0
    proc = pcmlab("inspect", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "the fit needs two" in proc.stdout and "Traceback" not in proc.stderr


def test_readout_times_are_anchored_to_the_end_of_programming(tmp_path: Path) -> None:
    """With pulses and reads taking time on the mock's clock, programming ends well after
    the chip's start: every readout's time is its chip time minus that end (a schedule
    anchored to the chip's start, or to the first pulse, fails here)."""
    from drivers import MockDriver
    from mock_chip import FaultRates, MockChipConfig
    from protocols.experiment import measure_run

    cfg = MockChipConfig(geometry={"rows": 32, "cols": 64}, seed=2, faults=FaultRates.none(),
                         timing={"pulse_call_s": 0.5, "pulse_per_cell_s": 1e-3,
                                 "read_call_s": 0.2, "read_per_cell_s": 5e-4})
    driver = MockDriver(config=cfg)
    cells = np.arange(1000, dtype=np.uint32)
    target = np.linspace(1, 20, cells.size).astype(np.float32)
    config = RunConfig(schedule={"t0_s": 20.0, "t_end_s": 1000.0, "n_readouts": 3})
    result, taken = measure_run(driver, config, tmp_path / "r.h5", cells=cells,
                                target_us=target)
    assert taken == 3 and result.end_s > 10.0  # programming took time on the chip's clock
    with RunReader(tmp_path / "r.h5") as run:
        ro = run.readouts()
        end = run.programming().end_chip_time_s
    assert end == pytest.approx(result.end_s)
    np.testing.assert_allclose(ro.time_s, ro.chip_time_s - end, rtol=0, atol=1e-9)
    times = config.schedule.times_s()
    assert (ro.time_s >= times).all() and (ro.time_s - times < 1.0).all()


@pytest.mark.parametrize("kill_at", [3, 20])  # during programming; between readouts
def test_a_killed_file_opens_in_plain_h5py_and_xarray_after_recover(tmp_path: Path,
                                                                     kill_at: int) -> None:
    import warnings

    import h5py
    import xarray as xr

    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out = tmp_path / "killed.h5"
    proc = subprocess.run([sys.executable, str(killer), str(config), str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    out.chmod(0o640)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(out, "r")
    with RunReader(out) as run:  # what pcmlab reads from the killed file (SWMR)
        before = run.readouts()
        targets = run.targets()
        prog = run.programming()
    proc = pcmlab("recover", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"closed, with {before.n} complete readouts" in " ".join(proc.stdout.split())
    assert out.stat().st_mode & 0o777 == 0o640
    with h5py.File(out, "r") as f:  # plain h5py, no SWMR
        n = before.n
        np.testing.assert_array_equal(f["readouts/conductance_us"][:n], before.conductance_us)
        np.testing.assert_array_equal(f["readouts/time_s"][:n], before.time_s)
        np.testing.assert_array_equal(f["readouts/chip_time_s"][:n], before.chip_time_s)
        np.testing.assert_array_equal(f["targets/conductance_us"][:], targets.conductance_us)
        assert f["readouts/time_s"].shape == (n,)  # no half-written row
        if prog is not None:
            np.testing.assert_array_equal(f["programming/conductance_us"][:],
                                          prog.conductance_us)
            assert f["programming/end_chip_time_s"][()] == prog.end_chip_time_s
        assert json.loads(f.attrs["interruptions"])[-1]["completed_readouts"] == n
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no phony-dims warning either
        ds = xr.open_dataset(out, group="readouts", engine="h5netcdf")
        np.testing.assert_array_equal(ds["conductance_us"].values, before.conductance_us)
        ds.close()
    proc = pcmlab("recover", str(out))
    assert proc.returncode == 0 and "closed already; nothing changed" in proc.stdout
    if prog is not None:  # the recovered run still resumes to the end of its schedule
        proc = pcmlab("resume", str(out))
        assert proc.returncode == 0, proc.stderr
        with RunReader(out) as run:
            assert run.n_readouts == 12
            np.testing.assert_array_equal(run.readouts().conductance_us[:n],
                                          before.conductance_us)


def test_recover_and_resume_refuse_a_file_a_live_run_is_writing(tmp_path: Path) -> None:
    from pcmlab.store import RunWriter

    path = tmp_path / "live.h5"
    with RunWriter.create(path, config={}, driver_identity="x", cells=[0, 1],
                          target_us=[1.0, 2.0], schedule_time_s=[20.0, 40.0]):
        for command in ("recover", "resume"):
            proc = pcmlab(command, str(path))
            assert proc.returncode == 2 and "a run is still writing this file" in proc.stderr
            assert "Traceback" not in proc.stderr
    proc = pcmlab("recover", str(path))
    assert proc.returncode == 0 and "closed already" in proc.stdout
