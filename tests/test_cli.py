"""The command line: main commands work, user mistakes give one clear line, no traceback."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcmlab.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_program_random_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["program", "--rows", "64", "--cols", "64", "--no-faults"]) == 0
    out = capsys.readouterr().out
    assert "convergence per target level" in out
    assert "% of non-zero cells converged" in out


def test_program_targets_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = np.full((16, 16), np.nan, dtype=np.float32)
    targets[:4] = 10.0
    path = tmp_path / "t.npy"
    np.save(path, targets)
    assert main(["program", "--rows", "16", "--cols", "16", "--targets", str(path)]) == 0
    assert "programming 64 cells" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["program", "--max-iterations", "0"], "max_iterations = 0"),
     (["program", "--tolerance-abs", "-1"], "tolerance_abs_us = -1.0"),
     (["program", "--rows", "0"], "rows = 0"),
     (["program", "--targets", "nope.npy"], "no such targets file"),
     (["program", "--rows", "8", "--cols", "8", "--cells", "100"], "--cells 100"),
     (["program", "--chip", "missing.toml"], "no such configuration file"),
     (["train", "-o", "/nonexistent-dir/m.pt"], "folder '/nonexistent-dir' does not exist"),
     (["run", "x.toml", "-o", "/nonexistent-dir/r.h5"], "does not exist; create it"),
     (["demo", "--output-dir", "/proc/pcmlab-demo"], "error:")],
)
def test_user_mistakes_exit_2_without_traceback(args: list[str], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_targets_file_of_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.ones((3, 5)))
    proc = run_cli("program", "--rows", "8", "--cols", "8", "--targets", str(path))
    assert proc.returncode == 2 and "must match the array, 8 x 8" in proc.stderr
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    proc = run_cli("program", "--targets", str(bad))
    assert proc.returncode == 2 and "not a numpy .npy array" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "expect"), [
    (["mock-server", "--tcp", "127.0.0.1:99999"], "port 99999 is outside 0..65535"),
    (["plot", "RUN", "-o", "x.h5"], "a figure is written as .png, .pdf, .svg"),
    (["plot", "RUN", "-o", "x.txt"], "a figure is written as .png, .pdf, .svg"),
    (["fit", "RUN", "-o", "c.h5"], "the calibration is written as .toml or .json"),
    (["run", "MODEL"], "expected a .toml or .json configuration file, got '.pt'"),
    (["train", "-o", "out.pt", "--data", "nothere.npz"], "nothere.npz: no such data file"),
])
def test_user_mistakes_end_in_one_line_before_any_work(tmp_path: Path, args, expect) -> None:
    run = tmp_path / "run.h5"
    run.write_bytes(b"not used: the check comes first")
    model = tmp_path / "m.pt"
    model.write_bytes(b"\x80\x04binary")
    args = [str(run) if a == "RUN" else str(model) if a == "MODEL" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "c.h5").exists()


def test_demo_checks_its_options_before_training(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    for bad in (["--rows", "0"], ["--runs", "0"], ["--calibration", "nothere.toml"]):
        proc = run_cli("demo", "--output-dir", str(out), *bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert not out.exists()  # nothing trained, nothing written
    proc = run_cli("deploy", "MODEL.pt", "-o", str(tmp_path / "d.h5"), "--runs", "0")
    assert proc.returncode == 2 and "--runs 0" in proc.stderr
    assert "(default: 25)" in run_cli("demo", "--help").stdout


def test_an_interrupted_command_does_not_exit_0(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C between driver calls ends program and run with 130, saying what is left."""
    import pcmlab.cli.runs as runs
    import protocols.experiment as experiment
    from protocols.interrupt import StopToken
    from protocols.program_verify import program_and_verify

    def stopped(driver, cells, targets, cfg, **kw):
        stop = StopToken()
        stop.request()  # as Ctrl-C does
        return program_and_verify(driver, cells, targets, cfg, stop=stop)

    monkeypatch.setattr(runs, "run_program", stopped)
    assert main(["program", "--rows", "32", "--cols", "32"]) == 130

    real = experiment.measure_run

    def measure_stopped(*a, **kw):
        stop = StopToken()
        stop.request()
        return real(*a, **{**kw, "stop": stop})

    monkeypatch.setattr(experiment, "measure_run", measure_stopped)
    config = tmp_path / "run.toml"
    config.write_text('[chip.geometry]\nrows = 16\ncols = 16\n[schedule]\nn_readouts = 3\n')
    assert main(["run", str(config), "-o", str(tmp_path / "r.h5")]) == 130


@pytest.mark.parametrize(("values", "expect"), [
    (np.array([1 + 2j, 3]), "must be real numbers (µS), got dtype complex128"),
    (np.array([]), "no target to program (0 values)"),
    (np.full(5, np.nan), "no target to program (5 values, all NaN)"),
    (np.array([1.0, np.inf, 2.0]), "1 infinite target(s), the first at cell 1"),
    (np.array([1.0, 30.0, 31.0]), "2 target(s) are above the chip's 25.0 µS, the first 30.0"),
    (np.array([1.0, -3.0]), "1 target(s) are negative, the first -3.0 µS for cell 1"),
])
def test_bad_targets_are_refused_naming_the_value_and_the_cell(tmp_path: Path, values,
                                                              expect) -> None:
    path = tmp_path / "t.npy"
    np.save(path, values)
    proc = run_cli("program", "--targets", str(path), "--rows", "16", "--cols", "16")
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert "converged" not in proc.stdout and "Traceback" not in proc.stderr


def test_out_of_range_levels_are_refused_before_the_file_exists(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[chip.geometry]\nrows = 16\ncols = 16\n[targets]\n"
                      "levels_us = [1.0, 30.0, 40.0]\n[schedule]\nn_readouts = 2\n")
    proc = run_cli("run", str(config), "-o", str(tmp_path / "bad.h5"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{config}: targets.levels_us: 30, 40 µS outside" in proc.stderr
    assert not (tmp_path / "bad.h5").exists()


def test_outputs_are_never_replaced_without_force(tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"my notes")
    config = tmp_path / "r.toml"
    config.write_text("[chip.geometry]\nrows = 16\ncols = 16\n[schedule]\nn_readouts = 3\n")
    run = tmp_path / "r.h5"
    assert run_cli("run", str(config), "-o", str(run)).returncode == 0
    for args in (["plot", str(run), "-o", str(notes)],
                 ["train", "-o", str(notes)],
                 ["check", "--yes", "--json", str(notes)],
                 ["fit", str(run), "-o", str(tmp_path / "c.toml"), "--plot", str(notes)]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "pass --force to replace it" in proc.stderr, args
        assert notes.read_bytes() == b"my notes"
    proc = run_cli("plot", str(run), "-o", str(notes), "--force")
    assert proc.returncode == 0 and notes.read_bytes()[:4] == b"\x89PNG"


def test_the_convergence_footnote_describes_only_the_columns_shown() -> None:
    from rich.console import Console

    from pcmlab.analysis import LevelStats
    from pcmlab.cli.common import convergence_table

    def render(t0: float | None) -> str:
        row = LevelStats(10.0, 5, 1.0, 3, 4, 0.01, 0.2, 0.5, t0, None if t0 is None else 0.6)
        console = Console(width=200, record=True)
        console.print(convergence_table([row], "t"))
        return console.export_text()

    assert "@t0" not in render(None)
    assert "@t0" in render(0.55) and "beside the model" in render(0.55)


RUN_TOML = ('[chip.geometry]\nrows = 16\ncols = 16\n[targets]\ncells = 64\n'
            '[schedule]\nn_readouts = 3\n')


def test_run_takes_resource_over_the_configuration(tmp_path: Path) -> None:
    from mock_chip.scpi_server import ScpiServer
    from tests.drivers.conftest import make_controller

    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)  # resource = "mock" by default
    with ScpiServer(make_controller(seed=4), "127.0.0.1", 0) as server:
        proc = run_cli("run", str(config), "--resource", server.resource, "-o",
                       str(tmp_path / "r.h5"))
    assert proc.returncode == 0, proc.stderr
    from pcmlab.store import RunReader

    with RunReader(tmp_path / "r.h5") as run:
        assert run.config["resource"] == server.resource  # what the run really used
        assert run.driver_identity.startswith("pcmlab,MockPCM-64x128")


@pytest.mark.parametrize(("args", "message"), [
    (["run", "{c}", "--bogus"], "pcmlab run: error: unrecognized arguments: --bogus"),
    (["inspect", "x.h5", "--nope"], "pcmlab inspect: error: unrecognized arguments: --nope"),
    (["run", "{c}", "-o", "{d}/out.txt"], "ends in .h5 or .hdf5"),
    (["run", "{c}", "-o", "/proc/x.h5"], "cannot write '/proc/x.h5'"),
    (["deploy", "m.pt", "-o", "{d}/d.txt"], "ends in .h5 or .hdf5"),
    (["run", "{c}", "--resource", "USB0::1::2", "-o", "{d}/r.h5"],
     "USB0::1::2: not a valid VISA resource name"),
    (["run", "{c}", "--resource", "TCPIP0::127.0.0.1::1::SOCKET", "-o", "{d}/r.h5"],
     "nothing is listening there (connection refused)"),
])
def test_cli_usage_and_resource_mistakes_are_one_line(tmp_path: Path, args: list[str],
                                                      message: str) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    proc = run_cli(*[a.format(c=config, d=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr
    if "usage" in proc.stderr:
        assert proc.stderr.splitlines()[0].startswith(f"usage: pcmlab {args[0]} ")
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob("*.txt"))


def test_chip_file_options_that_it_would_override_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--chip FILE sets the mock chip; --no-faults, --calibration, --seed, --rows/--cols
    beside it were ignored by the chip (while the simulation followed --no-faults)."""
    from mock_chip import MockChipConfig
    from pcmlab.config import ArrayGeometry

    chip = tmp_path / "chip.json"
    chip.write_text(MockChipConfig(geometry=ArrayGeometry(rows=16, cols=16)).model_dump_json())
    for extra in (["--no-faults"], ["--seed", "3"], ["--rows", "16"], ["--cols", "8"],
                  ["--calibration", str(chip)]):
        assert main(["program", "--chip", str(chip), *extra]) == 2, extra
        assert f"with {extra[0]}" in capsys.readouterr().err
    assert main(["program", "--chip", str(chip)]) == 0
    assert main(["program", "--rows", "16", "--cols", "16", "--no-faults", "--seed", "2"]) == 0


def test_a_chip_file_is_simulated_as_the_chip_it_builds(tmp_path: Path) -> None:
    """The simulated mode beside a --chip FILE mock takes that chip's constants and fault
    rates (it took the published constants, faults and all: a chip file without faulty
    devices, or with its own drift, was predicted as the published chip)."""
    import argparse

    from mock_chip import FaultRates, MockChipConfig
    from pcmlab.cli.common import calibration_of, make_driver
    from pcmlab.config import ArrayGeometry
    from pcmlab.pcm_model import PCMCalibration

    cal = PCMCalibration(drift_mu_range=(0.06, 0.11), stuck_set_rate=0.02)
    chip = tmp_path / "chip.json"
    chip.write_text(MockChipConfig(geometry=ArrayGeometry(rows=16, cols=16), calibration=cal,
                                   faults=FaultRates(stuck_reset=0.01, stuck_set=0.0,
                                                     weak=0.03)).model_dump_json())
    args = argparse.Namespace(chip=chip, resource=None, calibration=None, no_faults=False,
                              chips=1, seed=0, rows=16, cols=16, dialect=None)
    simulated = calibration_of(args)
    assert simulated.drift_mu_range == (0.06, 0.11)
    assert (simulated.stuck_reset_rate, simulated.stuck_set_rate, simulated.weak_rate) == (
        0.01, 0.0, 0.03)  # the chip's own faulty devices, not the calibration's rates
    built = make_driver(args).chip.config
    assert built.calibration.drift_mu_range == simulated.drift_mu_range
    assert FaultRates.of_calibration(simulated) == built.faults
