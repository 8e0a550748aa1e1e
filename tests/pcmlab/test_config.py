"""Configuration models: validation messages and TOML / JSON round trips."""

from pathlib import Path

import pytest

from mock_chip import MockChipConfig
from pcmlab.config import ArrayGeometry, ChipLimits, load_model, save_model, validate_model
from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMCalibration


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = MockChipConfig(geometry=ArrayGeometry(rows=16, cols=32), seed=7,
                         calibration=PCMCalibration(t0_s=30.0))
    path = save_model(cfg, tmp_path / f"chip{suffix}")
    assert load_model(MockChipConfig, path) == cfg


def test_error_names_field_value_and_range() -> None:
    with pytest.raises(ConfigError) as info:
        validate_model(ArrayGeometry, {"rows": 0, "cols": 8}, "chip.toml")
    msg = str(info.value)
    assert "chip.toml" in msg and "rows = 0" in msg and "greater than or equal to 1" in msg


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "chip.toml"
    path.write_text("[geometry]\nrows = 4\ncolums = 8\n")
    with pytest.raises(ConfigError, match="colums"):
        load_model(MockChipConfig, path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_model(ChipLimits, tmp_path / "missing.toml")
    bad = tmp_path / "x.toml"
    bad.write_text("rows = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_model(ArrayGeometry, bad)
    other = tmp_path / "x.yaml"
    other.write_text("rows: 3")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        load_model(ArrayGeometry, other)


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="min_width_ns"):
        validate_model(ChipLimits, {"min_width_ns": 100, "max_width_ns": 10})
    with pytest.raises(ConfigError, match="drift_mu_range"):
        validate_model(PCMCalibration, {"drift_mu_range": [0.2, 0.1]})


def test_nan_and_infinity_are_refused_as_such() -> None:
    from pcmlab.errors import ConfigError
    from protocols.program_verify import ProgramVerifyConfig

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="should be a finite number"):
            validate_model(ProgramVerifyConfig, {"tolerance_abs_us": bad}, "settings")
