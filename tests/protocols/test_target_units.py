"""Targets in the wrong unit are refused, naming the likely unit, wherever they enter
(``pcmlab program``, ``pcmlab run``, ``measure_run``, ``program_and_verify``), unless the
user explicitly allows targets below the read resolution."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import MockChipConfig
from pcmlab.errors import ConfigError
from protocols import ProgramVerifyConfig, program_and_verify
from protocols.experiment import measure_run

CHIP = MockChipConfig(geometry={"rows": 16, "cols": 16})


def _siemens_targets(n: int = 64) -> np.ndarray:
    """3 µS and 10 µS written in siemens, as a user who forgot the unit would."""
    return np.where(np.arange(n) % 2 == 0, 3e-6, 10e-6).astype(np.float32)


def test_cli_program_refuses_siemens_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, _siemens_targets())
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "program", "--rows", "16",
                           "--cols", "16", "--targets", str(path)],
                          capture_output=True, text=True, timeout=120)
    print(proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "converged" not in proc.stdout  # nothing programmed, no table
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "siemens" in lines[0] and "1e6" in lines[0]
    assert "--allow-targets-below-resolution" in lines[0]


def test_cli_program_nanosiemens_named(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.full(32, 3000.0, dtype=np.float32))  # 3 µS in nS
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "program", "--rows", "16",
                           "--cols", "16", "--targets", str(path)],
                          capture_output=True, text=True, timeout=120)
    print(proc.returncode, proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nanosiemens" in proc.stderr


def test_cli_program_explicit_option_programs_them(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.full(16, 0.3, dtype=np.float32))  # really 0.3 µS, on purpose
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "program", "--rows", "16",
                           "--cols", "16", "--no-faults", "--targets", str(path),
                           "--allow-targets-below-resolution"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "programming 16 cells" in proc.stdout


def test_measure_run_refuses_siemens(tmp_path: Path) -> None:
    target = _siemens_targets()
    cells = np.arange(target.size, dtype=np.uint32)
    with MockDriver(config=CHIP) as chip, pytest.raises(ConfigError) as err:
        measure_run(chip, {}, tmp_path / "r.h5", cells=cells, target_us=target)
    print(err.value)
    assert "siemens" in str(err.value) and "allow_targets_below_resolution" in str(err.value)
    assert not (tmp_path / "r.h5").exists()  # refused before the file exists


def test_run_config_file_targets_refused_and_allowed(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _siemens_targets())
    config = {"targets": {"kind": "file", "file": "t.npy"},
              "schedule": {"t0_s": 20, "t_end_s": 40, "n_readouts": 2}}
    with MockDriver(config=CHIP) as chip, pytest.raises(ConfigError, match="siemens"):
        measure_run(chip, config, tmp_path / "r.h5", config_dir=tmp_path)
    allowed = {**config, "program": {"allow_targets_below_resolution": True,
                                     "max_iterations": 2}}
    with MockDriver(config=CHIP) as chip:
        result, taken = measure_run(chip, allowed, tmp_path / "r.h5", config_dir=tmp_path)
    assert taken == 2 and result.cells.size == 64


def test_program_and_verify_refuses_and_real_small_targets_pass() -> None:
    with MockDriver(config=CHIP) as chip:
        with pytest.raises(ConfigError, match="millisiemens"):
            program_and_verify(chip, np.arange(8), np.full(8, 0.01))  # 10 µS in mS
        # one real target among small ones: µS after all, programmed as given
        mixed = np.r_[np.full(7, 0.2), 12.0].astype(np.float32)
        result = program_and_verify(chip, np.arange(8), mixed,
                                    ProgramVerifyConfig(max_iterations=3))
        assert result.cells.size == 8
