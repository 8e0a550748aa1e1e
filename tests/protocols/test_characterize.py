"""Characterize a chip and fit the PCM model: recovery, sensitivity, bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.config import load_model
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.fitting import fit_clipped_line, fit_file
from pcmlab.pcm_model import PCMCalibration, PCMModel
from protocols.characterize import CharacterizeConfig, characterize
from protocols.interrupt import StopToken

LEVELS = np.arange(1, 10) * 2.5  # 2.5 ... 22.5 µS
DEFAULT = PCMCalibration()
LOUD = PCMCalibration(prog_noise_coeffs_us=tuple(1.5 * c for c in DEFAULT.prog_noise_coeffs_us))
DRIFTY = PCMCalibration(drift_mu_coeffs=(-0.0155, 0.0444), drift_mu_range=(0.069, 0.12))


def measure(tmp_path: Path, calibration: PCMCalibration, name: str, seed: int = 4,
            **cfg) -> Path:
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 128, "cols": 128}, seed=seed,
                                              faults=FaultRates.none(),
                                              calibration=calibration))
    path = tmp_path / f"{name}.h5"
    characterize(driver, path, CharacterizeConfig(**cfg))
    return path


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("char")
    return {name: fit_file(measure(tmp, cal, name))
            for name, cal in (("default", DEFAULT), ("loud", LOUD), ("drifty", DRIFTY))}


def test_recovers_the_constants_of_the_chip(fits) -> None:
    true = PCMModel(DEFAULT)
    fitted = PCMModel(fits["default"].calibration)
    np.testing.assert_allclose(fitted.prog_noise_sigma_us(LEVELS),
                               true.prog_noise_sigma_us(LEVELS), rtol=0.15)
    np.testing.assert_allclose(fitted.drift_nu_mean(LEVELS), true.drift_nu_mean(LEVELS),
                               rtol=0.10)
    assert fits["default"].calibration.read_noise_q == pytest.approx(DEFAULT.read_noise_q,
                                                                     rel=0.20)


def test_a_changed_chip_is_told_apart(fits) -> None:
    base = PCMModel(fits["default"].calibration)
    loud = PCMModel(fits["loud"].calibration)
    drifty = PCMModel(fits["drifty"].calibration)
    assert (loud.prog_noise_sigma_us(LEVELS) > 1.1 * base.prog_noise_sigma_us(LEVELS)).all()
    assert (drifty.drift_nu_mean(LEVELS) > base.drift_nu_mean(LEVELS) + 0.015).all()
    np.testing.assert_allclose(drifty.drift_nu_mean(LEVELS),
                               PCMModel(DRIFTY).drift_nu_mean(LEVELS), rtol=0.10)
    # what did not change stays put
    np.testing.assert_allclose(drifty.prog_noise_sigma_us(LEVELS),
                               base.prog_noise_sigma_us(LEVELS), rtol=0.1)


def test_clipped_line_fit_finds_plateaus() -> None:
    x = np.log(np.linspace(0.05, 1, 12))
    y = np.clip(-0.02 * x + 0.01, 0.03, 0.09)
    a, b, lo, hi = fit_clipped_line(x, y, np.ones_like(x), (0.0, 0.05, 0.0, 1.0))
    np.testing.assert_allclose(np.clip(a * x + b, lo, hi), y, atol=1e-9)


def test_too_few_cells_and_missing_readouts_are_named(tmp_path: Path) -> None:
    few = measure(tmp_path, DEFAULT, "few", cells_per_level=20)
    with pytest.raises(SchemaError, match=r"level 0 µS has \d+ converged cells; the fit needs "
                                          "at least 50"):
        fit_file(few)
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 128, "cols": 128}))
    stop = StopToken()

    def on_wait(i: int, t: float, now: float) -> None:
        if i == 4:
            stop.request()

    characterize(driver, tmp_path / "short.h5", CharacterizeConfig(cells_per_level=100),
                 on_wait=on_wait, stop=stop)
    with pytest.raises(SchemaError, match="needs the 10 read-noise reads and at least 2 drift "
                                          "reads; the file has 4 readouts"):
        fit_file(tmp_path / "short.h5")
    plain = tmp_path / "plain.toml"
    plain.write_text("[chip.geometry]\nrows = 16\ncols = 16\n[schedule]\nn_readouts = 3\n")
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "run", str(plain), "-o",
                           str(tmp_path / "plain.h5")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    with pytest.raises(SchemaError, match="not a characterization file"):
        fit_file(tmp_path / "plain.h5")
    with pytest.raises(ConfigError, match="more than the chip's"):
        characterize(driver, tmp_path / "big.h5", CharacterizeConfig(cells_per_level=5000))
    with pytest.raises(ValueError, match=r"t_end_s=30\.0 must be after"):
        CharacterizeConfig(t_end_s=30.0)


def test_command_line_round_trip_into_the_demo(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args],
                              capture_output=True, text=True, timeout=600)

    char = tmp_path / "char.h5"
    assert cli("characterize", "-o", str(char), "--cells-per-level", "300").returncode == 0
    cal = tmp_path / "cal.toml"
    proc = cli("fit", str(char), "-o", str(cal))
    assert proc.returncode == 0, proc.stderr
    assert "σ_prog =" in proc.stdout and (tmp_path / "cal.png").exists()
    fitted = load_model(PCMCalibration, cal)
    assert fitted != DEFAULT
    proc = cli("demo", "--output-dir", str(tmp_path / "demo"), "--epochs", "5", "--runs",
               "2", "--calibration", str(cal))
    assert proc.returncode == 0, proc.stderr
    assert "measured %" in proc.stdout
    proc = cli("fit", str(tmp_path / "nope.h5"), "-o", str(cal))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_interrupted_characterization_resumes_on_a_rebuilt_mock(tmp_path: Path) -> None:
    config = MockChipConfig(geometry={"rows": 64, "cols": 64}, seed=9)
    stop = StopToken()

    def on_wait(i: int, t: float, now: float) -> None:
        if i == 6:
            stop.request()

    path = tmp_path / "char.h5"
    characterize(MockDriver(config=config), path, CharacterizeConfig(cells_per_level=100),
                 on_wait=on_wait, stop=stop,
                 record={"resource": "mock", "chip": config.model_dump(mode="json")})
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "resume", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "6 readouts were there, 22 of 22 now" in proc.stdout
    assert fit_file(path).levels  # and the fit takes it


def test_drift_fits_count_from_each_cells_own_last_pulse(tmp_path: Path) -> None:
    """On a chip that programs slowly (2 ms per pulse), cells that converged first are up
    to a minute older than the end of programming, where the readouts count from: fitted
    against each cell's own age, nu is the model's; against the end of programming it is
    several per cent low (the early readouts look flatter than they are)."""
    from pcmlab.analysis import fit_drift
    from pcmlab.store import RunReader

    driver = MockDriver(config=MockChipConfig(geometry={"rows": 64, "cols": 128}, seed=4,
                                              faults=FaultRates.none(),
                                              timing={"pulse_per_cell_s": 2e-3}))
    characterize(driver, tmp_path / "slow.h5", CharacterizeConfig(cells_per_level=500))
    fit = fit_file(tmp_path / "slow.h5")
    with RunReader(tmp_path / "slow.h5") as run:
        prog, ro, target = run.programming(), run.readouts(), run.targets().conductance_us
    offset = prog.end_chip_time_s - prog.last_pulse_s
    nu_end, _ = fit_drift(ro.time_s, ro.conductance_us)  # every cell from the end
    model = PCMModel(DEFAULT)
    print(f"cells older than the end of programming by {np.nanmin(offset):.3f}.."
          f"{np.nanmax(offset):.1f} s")
    assert np.nanmax(offset) > 30.0
    for lv in fit.levels:
        if lv.target_us < 7.5:  # mu_nu at its floor from here: one sharp figure
            continue
        sel = (target == lv.target_us) & prog.converged
        expect = float(model.drift_nu_mean(lv.target_us))
        from_end = float(np.nanmean(nu_end[sel]))
        print(f"{lv.target_us:5.1f} µS: nu {lv.nu_mean:.4f} (each cell's age), "
              f"{from_end:.4f} (end of programming), model {expect:.4f}")
        assert lv.nu_mean == pytest.approx(expect, rel=0.03)
        assert from_end < expect * 0.97  # what counting from the end would have given
