"""The simulated mode includes the chip's faulty devices (the calibration's rates), and
'pcmlab fit' measures those rates from a characterization."""

import json
from pathlib import Path

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.config import load_model
from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches, Periphery
from pcmlab.fitting import fit_file
from pcmlab.pcm_model import PCMCalibration, PCMModel
from protocols.characterize import CharacterizeConfig, characterize
from protocols.deploy import DeployConfig, deploy_network
from protocols.readout import ReadoutSchedule

# a chip with more faulty devices than the default (0.3 / 0.1 / 0.5 %), so that what the
# faults cost stands well clear of the spread of a fault-free simulation
RATES = {"stuck_reset": 0.02, "stuck_set": 0.01, "weak": 0.02}
CAL = PCMCalibration(stuck_reset_rate=0.02, stuck_set_rate=0.01, weak_rate=0.02)


def test_measured_accuracy_of_a_faulty_chip_lies_within_the_simulated_spread(
        digits_model, tmp_path: Path) -> None:
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery(dac_bits=8, adc_bits=8))
    chip = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512},
                                            faults=FaultRates(**RATES), seed=0))
    cfg = DeployConfig(schedule=ReadoutSchedule(t0_s=20, t_end_s=86400, n_readouts=3),
                       simulated_runs=20, seed=1)
    r = deploy_network(chip, ev, d.x_test, d.y_test, tmp_path / "run.h5", cfg,
                       pcm=PCMModel(CAL))
    without = ev.simulate(d.x_test, d.y_test, r.mapping, r.simulated.time_s, 20,
                          np.random.default_rng(1), pcm=PCMModel(CAL),
                          noise=NoiseSwitches(faults=False))
    print("measured", np.round(100 * r.measured_accuracy, 2))
    print("simulated with faults", np.round(100 * r.simulated.mean, 2), "±",
          np.round(100 * r.simulated.std, 2))
    print("simulated without faults", np.round(100 * without.mean, 2), "±",
          np.round(100 * without.std, 2))
    assert "2.00 % stuck-RESET, 1.00 % stuck-SET, 2.00 % weak" in r.simulated.includes
    # the chip is one draw of what the simulation spans: within 3 standard deviations
    assert (np.abs(r.measured_accuracy - r.simulated.mean) <= 3 * r.simulated.std).all()
    # left out, the faults make the prediction optimistic, far beyond its own spread
    assert (without.mean - r.measured_accuracy > 3 * without.std).all()
    assert "no faulty devices" in without.includes


def test_fit_measures_the_fault_rates_and_old_files_load(tmp_path: Path) -> None:
    chip = MockDriver(config=MockChipConfig(geometry={"rows": 128, "cols": 128}, seed=4,
                                            faults=FaultRates(**RATES)))
    path = tmp_path / "char.h5"
    characterize(chip, path, CharacterizeConfig(cells_per_level=1400, drift_reads=3))
    fitted = fit_file(path)
    c, f = fitted.calibration, fitted.faults
    print("fitted", c.stuck_reset_rate, c.stuck_set_rate, c.weak_rate,
          c.stuck_set_range_us, c.weak_ceiling_range_us, f)
    # counts of a few dozen to a few hundred devices: within 3 binomial standard deviations
    for rate, counted, true in ((c.stuck_reset_rate, f.stuck_reset, RATES["stuck_reset"]),
                                (c.stuck_set_rate, f.stuck_set, RATES["stuck_set"]),
                                (c.weak_rate, f.weak, RATES["weak"])):
        sd = np.sqrt(true * (1 - true) / counted[1])
        assert abs(rate - true) <= 3 * sd, (rate, true, counted)
    # the mock's stuck-SET devices sit at 0.7..1 G_sat, its weak ones below 0.6 G_sat; G_sat
    # = 32 exp(0.1 N(0,1)) µS reaches 32 exp(-0.4) = 21.5 µS over thousands of devices, so
    # the lowest stuck-SET level can be 0.7 x 21.5 = 15 µS
    assert 14 < c.stuck_set_range_us[0] < c.stuck_set_range_us[1] < 40
    assert 2 < c.weak_ceiling_range_us[0] < c.weak_ceiling_range_us[1] < 22
    # a calibration file from before the fault fields loads, with the default rates
    old = tmp_path / "old.json"
    data = PCMCalibration().model_dump(mode="json")
    for name in ("stuck_reset_rate", "stuck_set_rate", "stuck_set_range_us", "weak_rate",
                 "weak_ceiling_range_us"):
        data.pop(name)
    old.write_text(json.dumps(data))
    assert load_model(PCMCalibration, old) == PCMCalibration()


def test_fault_rates_have_one_home() -> None:
    assert FaultRates() == FaultRates.of_calibration(PCMCalibration())
    with pytest.raises(ValueError, match="add up to"):
        PCMCalibration(stuck_reset_rate=0.6, weak_rate=0.6)
