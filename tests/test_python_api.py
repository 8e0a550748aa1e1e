"""The documented Python API: the example protocol script against the CLI, help() on the
configurations, open_run on finished, live and killed files, and the docs' code."""

import os
import pydoc
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import pcmlab

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("script")
    proc = run(str(ROOT / "examples" / "protocol_script.py"), "-o", "first.h5", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "10 readouts in first.h5" in proc.stdout
    return folder / "first.h5"


def test_the_protocol_script_gives_the_numbers_of_the_command_line(first_run: Path) -> None:
    cli = first_run.with_name("cli.h5")
    proc = run("-m", "pcmlab.cli", "run", str(ROOT / "examples" / "protocol_script.toml"),
               "-o", str(cli), cwd=first_run.parent)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(first_run, "r") as a, h5py.File(cli, "r") as b:
        for name in ("targets/cell", "targets/conductance_us", "programming/conductance_us",
                     "programming/iterations", "readouts/time_s", "readouts/conductance_us"):
            np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name)


@pytest.mark.parametrize("cls", [pcmlab.RunConfig, pcmlab.ProgramVerifyConfig,
                                 pcmlab.ReadoutSchedule, pcmlab.MockChipConfig,
                                 pcmlab.DeployConfig, pcmlab.Periphery, pcmlab.TargetSpec])
def test_help_on_a_configuration_is_a_short_description_of_its_fields(cls) -> None:
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert len(text.splitlines()) < 90, text
    assert "model_dump_json" not in text and "__pydantic" not in text
    for name, field in cls.model_fields.items():
        assert f"{name}: " in text
        assert field.description, f"{cls.__name__}.{name} has no description"
        assert field.description.split()[0] in text


def test_measure_run_validates_like_the_command_line(tmp_path: Path) -> None:
    driver = pcmlab.open_driver("mock://?rows=8&cols=8")
    with pytest.raises(pcmlab.ConfigError, match=r"schedule.n_readouts = 1"):
        pcmlab.measure_run(driver, {"schedule": {"n_readouts": 1}}, tmp_path / "a.h5")
    with pytest.raises(pcmlab.ConfigError, match="one target per cell"):
        pcmlab.measure_run(driver, pcmlab.RunConfig(), tmp_path / "a.h5",
                           cells=np.arange(4), target_us=np.ones(3))
    with pytest.raises(pcmlab.ConfigError, match=r"above the chip's 25\.0 µS"):
        pcmlab.measure_run(driver, pcmlab.RunConfig(), tmp_path / "a.h5",
                           cells=np.arange(4), target_us=np.full(4, 40.0))
    assert not (tmp_path / "a.h5").exists()  # refused before the file was made


def test_open_run_has_named_dimensions_coordinates_and_units(first_run: Path) -> None:
    import xarray as xr

    ds = pcmlab.open_run(first_run)
    assert ds.conductance_us.dims == ("readout", "cell")
    assert ds.sizes["readout"] == 10 and ds.sizes["cell"] == 4096
    for name in ("time_s", "target_us", "level", "row", "col", "layer"):
        assert name in ds.coords
    assert ds.conductance_us.attrs["units"] == "µS" and ds.time_s.attrs["units"] == "s"
    assert sorted(np.unique(ds.level.values).tolist()) == [0, 2, 5, 8, 11, 14, 17, 20]
    np.testing.assert_array_equal(ds.row * 64 + ds.col, ds.cell)
    assert ds.attrs["driver"].startswith("pcmlab,MockPCM-64x64") and ds.attrs["rows"] == 64
    with pcmlab.RunReader(first_run) as run:  # the same numbers as the reader's
        np.testing.assert_array_equal(ds.conductance_us.values,
                                      run.readouts().conductance_us)
    # the dataset writes to NetCDF and reads back without pcmlab
    ds.to_netcdf(first_run.with_name("copy.nc"), engine="h5netcdf")
    with xr.open_dataset(first_run.with_name("copy.nc"), engine="h5netcdf") as back:
        np.testing.assert_array_equal(back.conductance_us.values, ds.conductance_us.values)


def test_level_tables_are_the_inspect_tables(first_run: Path) -> None:
    ds = pcmlab.open_run(first_run)
    conv = pcmlab.level_convergence(ds)
    assert conv.level.values.tolist() == [0, 2, 5, 8, 11, 14, 17, 20]
    assert conv.cells.values.tolist() == [512] * 8
    drift = pcmlab.level_drift(ds)
    assert drift.level.values.tolist() == [2, 5, 8, 11, 14, 17, 20]
    model = pcmlab.PCMModel()
    np.testing.assert_allclose(drift.model_nu_mean.values,
                               model.drift_nu_mean(drift.level.values), rtol=1e-6)
    nu = pcmlab.drift_exponents(ds)
    sel = (ds.level == 8).values & ds.converged.values
    assert float(drift.nu_mean.sel(level=8)) == pytest.approx(float(np.nanmean(nu[sel])))
    with pytest.raises(pcmlab.ConfigError, match="not an evaluated network deployment"):
        pcmlab.accuracy_over_time(ds)



def test_level_convergence_reports_the_spread_of_the_read_at_t0(first_run: Path) -> None:
    """t0_std_us: RMS of (the readout nearest t0 minus the target) over each level's
    converged cells, beside the model's spread of a read at that time (was NaN)."""
    ds = pcmlab.open_run(first_run)
    conv = pcmlab.level_convergence(ds)
    model = pcmlab.PCMModel()
    with h5py.File(first_run, "r") as f:  # the same figures from the file by hand
        t_s = f["readouts/time_s"][...]
        k = int(np.argmin(np.abs(np.log(t_s / model.calibration.t0_s))))
        g_t0 = f["readouts/conductance_us"][k].astype(np.float64)
        target = f["targets/conductance_us"][...]
        converged = f["programming/converged"][...]
    assert conv.attrs["t0_readout_time_s"] == t_s[k]
    assert abs(t_s[k] - model.calibration.t0_s) < 5  # the schedule reads first at t0
    for level in conv.level.values:
        sel = (target == np.float32(level)) & converged
        want = np.sqrt(np.mean((g_t0[sel] - target[sel]) ** 2))
        assert float(conv.t0_std_us.sel(level=level)) == pytest.approx(want, rel=1e-6)
        spread = np.sqrt(np.mean(model.total_sigma_us(target[sel], t_s[k]) ** 2))
        assert float(conv.t0_model_std_us.sel(level=level)) == pytest.approx(spread)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pcmlab.store import RunWriter
    w = RunWriter.create(sys.argv[1], config={}, driver_identity="x", cells=np.arange(5),
                         target_us=np.arange(5.0), schedule_time_s=[20.0, 40.0, 80.0])
    w.write_programming(conductance_us=np.arange(5.0), iterations=np.ones(5),
                        converged=np.ones(5, bool), last_pulse_s=np.zeros(5),
                        end_chip_time_s=1.0, interrupted=False)
    for i in range(2):
        w.append_readout(20.0 * (i + 1), 21.0 + 20 * i, 1.7e9, np.full(5, i, np.float32))
    print("written", flush=True)
    time.sleep(120)
""")


def test_open_run_while_a_run_writes_and_after_it_was_killed(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        live = pcmlab.open_run(path)
        assert live.sizes["readout"] == 2 and live.time_s.values.tolist() == [20.0, 40.0]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = pcmlab.open_run(path)
    np.testing.assert_array_equal(killed.conductance_us.values, live.conductance_us.values)


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


def test_the_python_api_page_runs_as_written(first_run: Path, tmp_path: Path) -> None:
    """Every code block of docs/python-api.md, in order, in one interpreter: the script
    block writes first.h5, the notebook blocks analyze it, the last opens it in xarray."""
    code = "\n".join(python_blocks(ROOT / "docs" / "python-api.md"))
    script = tmp_path / "page.py"
    script.write_text(code)
    with warnings.catch_warnings():
        proc = run("-W", "error::UserWarning", str(script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "10 readouts" in proc.stdout and "('time_s', 'cell')" in proc.stdout
    assert proc.stdout.count("chip mode at ") == 3  # a network of one's own, chip mode
    assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"


def test_the_readme_from_python_section_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python"):text.index("### Deploying a network")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))
    script = tmp_path / "readme.py"
    script.write_text(code)
    proc = run(str(script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "('readout', 'cell')" in proc.stdout and "nu_mean" in proc.stdout
