"""Simulation sweeps on Dask: the same numbers on a real cluster as in-process, a killed
sweep resumed computing only what is missing, the NetCDF result, and bad sweep files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SWEEP = """
runs = 4
runs_per_task = 2
times_s = [25.0, 86400.0, 31536000.0]
seed = 3

[training]
stage1_epochs = 2
stage2_epochs = 1

[axes]
training = ["off-the-shelf", "full"]
bits = [8, 4]
drift_compensation = [true, false]
"""


def pcmlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "sweep.toml").write_text(SWEEP)
    proc = pcmlab("sweep", "sweep.toml", "-o", "local.nc", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "16 evaluation tasks: 0 kept from an earlier start, 16 computed" in out
    assert "on this process" in out
    return folder / "local.nc"


def accuracy(path: Path) -> np.ndarray:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.accuracy.values.copy()


def test_the_result_is_a_dataset_for_analysts(in_process: Path) -> None:
    import xarray as xr

    with xr.open_dataset(in_process, engine="h5netcdf") as ds:  # no pcmlab needed
        assert ds.accuracy.dims == ("training", "bits", "drift_compensation", "run", "time")
        assert ds.training.values.tolist() == ["off-the-shelf", "full"]
        assert ds.bits.values.tolist() == [8, 4]
        assert ds.drift_compensation.values.tolist() == ["on", "off"]
        assert ds.time_s.attrs["units"] == "s" and ds.accuracy.attrs["units"] == "1"
        assert "drift_compensation = [true, false]" in ds.attrs["sweep"]
        assert ds.attrs["schema"] == "pcmlab-sweep/1"
        # what the simulation included where not an axis: faulty devices too
        fixed = json.loads(ds.attrs["fixed"])
        assert fixed["faults"] is True and fixed["programming_noise"] is True
        acc = ds.accuracy.values
        assert np.isfinite(acc).all() and ((acc > 0) & (acc <= 1)).all()
        # what the switches should do: without drift compensation a year costs accuracy
        year = ds.isel(time=2).sel(training="off-the-shelf", bits=8)
        assert (float(year.accuracy_mean.sel(drift_compensation="on"))
                > float(year.accuracy_mean.sel(drift_compensation="off")) + 0.2)
        np.testing.assert_allclose(ds.accuracy_mean, ds.accuracy.mean("run"))
        # every run has its own stream: the two blocks of runs of a point differ
        first, second = acc[..., :2, 1:], acc[..., 2:, 1:]
        assert (first != second).any(axis=(-1, -2)).all()
    proc = pcmlab("inspect", str(in_process), cwd=in_process.parent)
    assert proc.returncode == 0 and "drift_compensation" in proc.stdout
    assert "± " in proc.stdout
    proc = pcmlab("plot", str(in_process), "-o", "fig.png", cwd=in_process.parent)
    assert proc.returncode == 0, proc.stderr
    assert (in_process.parent / "fig.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_real_dask_cluster_gives_the_in_process_numbers(in_process: Path,
                                                           tmp_path: Path) -> None:
    from dask.distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file),
                               "--idle-timeout", "300"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
        (tmp_path / "sweep.toml").write_text(SWEEP)
        proc = pcmlab("sweep", "sweep.toml", "-o", "cluster.nc", "--scheduler", address,
                      cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"on the cluster at {address}" in " ".join(proc.stdout.split())
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    np.testing.assert_array_equal(accuracy(tmp_path / "cluster.nc"), accuracy(in_process))


def test_a_killed_sweep_computes_only_what_is_missing(in_process: Path,
                                                      tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(SWEEP)
    parts = tmp_path / "r.nc.parts"
    proc = subprocess.Popen([sys.executable, "-m", "pcmlab.cli", "sweep", "sweep.toml", "-o",
                             "r.nc"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(parts.glob("eval-*.npy"))) < 3:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = len(list(parts.glob("eval-*.npy")))
    assert 3 <= kept < 16, kept  # killed midway
    assert not (tmp_path / "r.nc").exists()
    proc = pcmlab("sweep", "sweep.toml", "-o", "r.nc", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"16 evaluation tasks: {kept} kept from an earlier start, {16 - kept} computed"
            in " ".join(proc.stdout.split()))
    np.testing.assert_array_equal(accuracy(tmp_path / "r.nc"), accuracy(in_process))
    proc = pcmlab("sweep", "sweep.toml", "-o", "r.nc", cwd=tmp_path)  # nothing left to do
    assert "16 kept from an earlier start, 0 computed (and 0 trainings)" in " ".join(
        proc.stdout.split())


@pytest.mark.parametrize(("text", "message"), [
    ("[axes]\nbitz = [8]\n", "unknown axis 'bitz'"),
    ("[axes]\ntraining = ['magic']\n", "'magic' is not one of as-is, off-the-shelf"),
    ("[axes]\nbits = [8, 40]\n", "40 bits is outside 1..16"),
    ("[axes]\nbits = [8]\nadc_bits = [4]\n", "give 'bits'"),
    ("runs = 0\n", "runs = 0"),
    ("[axes]\ncalibration = ['nope.toml']\n", "nope.toml: no such configuration file"),
])
def test_a_bad_sweep_file_is_one_line_before_any_work(tmp_path: Path, text: str,
                                                      message: str) -> None:
    (tmp_path / "s.toml").write_text(text)
    proc = pcmlab("sweep", "s.toml", "-o", "x.nc", cwd=tmp_path)
    assert proc.returncode == 2 and message in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.nc").exists() and not (tmp_path / "x.nc.parts").exists()


def test_another_sweeps_result_is_not_replaced(in_process: Path, tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SWEEP.replace("seed = 3", "seed = 4"))
    target = tmp_path / "local.nc"
    target.write_bytes(in_process.read_bytes())
    proc = pcmlab("sweep", "s.toml", "-o", "local.nc", cwd=tmp_path)
    assert proc.returncode == 2 and "holds the result of another sweep" in proc.stderr


def test_a_changed_setting_is_computed_again_not_taken_from_the_parts(tmp_path: Path) -> None:
    """Finished tasks are reused only for the same task: keeping a layer digital changes
    every evaluation, so none is kept."""
    from pcmlab.sweep import SweepConfig, run_sweep

    base = {"runs": 2, "runs_per_task": 2, "times_s": [25.0, 86400.0],
            "training": {"stage1_epochs": 1, "stage2_epochs": 0}, "axes": {"bits": [6]}}
    first = run_sweep(SweepConfig.model_validate(base), tmp_path / "s.nc")
    again = run_sweep(SweepConfig.model_validate(base), tmp_path / "s.nc")
    assert (first.computed, again.kept, again.computed) == (1, 1, 0)
    other = {**base, "network": {"keep_digital": ["9"]}}  # the classifier stays digital
    changed = run_sweep(SweepConfig.model_validate(other), tmp_path / "s.nc")
    assert (changed.kept, changed.computed) == (0, 1)
    assert not np.array_equal(changed.dataset.accuracy.values, first.dataset.accuracy.values)
