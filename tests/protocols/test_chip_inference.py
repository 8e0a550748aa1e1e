"""Chip mode (the network's MACs on the chip's MVM) and chip-in-the-loop calibration."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers import MockDriver
from drivers.visa import VisaDriver
from mock_chip import FaultRates, MockChip, MockChipConfig
from mock_chip.controller import Controller
from mock_chip.scpi_server import ScpiServer
from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.store import RunReader
from protocols.chip_inference import ChipInTheLoop, chip_accuracy
from protocols.program_verify import program_pairs

YEAR_S = 365 * 86400.0
# a chip whose ADCs differ column to column: 10 % gain, 2 LSB offset (std)
MISMATCHED = {"adc_gain_std": 0.1, "adc_offset_std_lsb": 2.0}


def deployed(evaluator: AnalogEvaluator, driver) -> tuple[object, float]:
    mapping = evaluator.mapping(256, 512)
    cells, target, _ = evaluator.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    result = program_pairs(driver, cells, target, plus, minus)
    return mapping, result.end_s


def test_calibration_on_the_chip_recovers_accuracy_at_one_year(digits_model) -> None:
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery())
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=3,
                                              faults=FaultRates.none(), mvm=MISMATCHED))
    mapping, end_s = deployed(ev, driver)
    ideal = ev.ideal_accuracy(d.x_test, d.y_test)
    loop = ChipInTheLoop(ev, driver, mapping, d.x_test, d.y_test, d.x_train[:256])
    driver.clock.sleep_until(end_s + 20.0)
    start = loop.at(20.0)
    driver.clock.sleep_until(end_s + YEAR_S)
    year = loop.at(YEAR_S)
    assert start.uncorrected > ideal - 0.03  # the chip computes the network at t0
    assert year.uncorrected < ideal - 0.3  # a year of drift, uncorrected: lost
    assert year.drift_compensated > year.uncorrected + 0.3
    # what calibration adds beyond global drift compensation: the columns' own errors
    assert year.recalibrated > year.drift_compensated + 0.01, year
    assert year.recalibrated > ideal - 0.02, (year, ideal)
    assert year.calibrated_once > year.drift_compensated, year


def test_chip_mode_over_scpi_gives_the_in_process_numbers(digits_model) -> None:
    """The same chip (same seed, same operations) in process and behind the SCPI server:
    every code crosses the wire intact, so the accuracy is the same to the last sample."""
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery())
    config = MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=5,
                            faults=FaultRates.none())
    local = MockDriver(MockChip(config))
    mapping, end_local = deployed(ev, local)
    local.clock.sleep_until(end_local + 25.0)
    x, y = d.x_test[:200], d.y_test[:200]
    in_process = chip_accuracy(ev, local, mapping, x, y)
    with ScpiServer(Controller(MockChip(config)), "127.0.0.1", 0) as server, \
            VisaDriver(server.resource, timeout_s=30) as remote:
        mapping_r, end_r = deployed(ev, remote)
        # SYST:TIME? has microsecond resolution on the wire (the mock's clock now moves by
        # its command times, so the end of programming is not a round number)
        assert mapping_r == mapping and end_r == pytest.approx(end_local, abs=1e-6)
        remote.clock.sleep_until(end_r + 25.0)
        over_tcp = chip_accuracy(ev, remote, mapping_r, x, y)
    assert over_tcp == in_process
    assert in_process > 0.9


def test_the_demo_records_chip_mode_beside_measured(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "demo", "--epochs",
                           "8", "--runs", "2", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "chip mode: the test set through the chip's MVM" in out
    assert "recalibrated %" in out and "calibrated once %" in out
    with RunReader(tmp_path / "demo-run.h5") as run:
        ev = run.evaluation()
    n = ev["measured_accuracy"].size
    for name in ("chip_uncorrected", "chip_drift_compensated", "chip_calibrated_once",
                 "chip_recalibrated"):
        assert ev[name].shape == (n,) and np.isfinite(ev[name]).all()
    lag = ev["chip_time_s"] - ev["measured_time_s"]  # chip mode runs after its readout
    assert (lag > 0).all() and (lag < 600).all(), lag
    assert ev["chip_recalibrated"][-1] > ev["chip_uncorrected"][-1] + 0.2


def test_chip_mode_needs_the_capability(digits_model, tmp_path: Path) -> None:
    from pcmlab.errors import ConfigError
    from protocols.deploy import DeployConfig, deploy_network

    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery())
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512},
                                              mvm={"enabled": False}))
    with pytest.raises(ConfigError, match="has no MVM capability"):
        deploy_network(driver, ev, d.x_test, d.y_test, tmp_path / "x.h5",
                       DeployConfig(chip_in_the_loop=True))
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kws_cnn", "lstm", "transformer", "resnet"])
def test_chip_mode_computes_every_layer_kind_as_reads_do(name: str) -> None:
    """Conv1d with a depthwise (grouped) block, LSTM, attention, a residual CNN with
    strided and 1x1 convolutions, spread over two arrays: with an ideal periphery, chip
    mode agrees with measured mode (the same conductances read), layer kind by kind, at
    the chip's default operation times (its MVMs come up to a second of chip time after
    the read: drift between them is negligible). The mock's read noise is off here: each
    MVM is a read of its own, and on these small networks two reads' noise alone moves
    the accuracy by several points (the next test)."""
    import torch

    from examples import networks
    from pcmlab.pcm_model import PCMCalibration
    from pcmlab.tasks import load_digits, train_classifier

    torch.manual_seed(0)
    shape = (1, 8, 8) if name == "resnet" else (8, 8)
    data = load_digits(input_shape=shape)
    model = train_classifier(getattr(networks, name)(), data.x_train, data.y_train,
                             epochs=5, weight_noise=0.03).eval()
    ev = AnalogEvaluator(model, data.x_train, Periphery())
    rows, cols = (128, 256) if name in ("lstm", "resnet") else (256, 512)
    mapping = ev.mapping(rows, cols, arrays=2)
    driver = MockDriver(config=MockChipConfig(
        geometry={"rows": 2 * rows, "cols": cols}, seed=3, faults=FaultRates.none(),
        calibration=PCMCalibration(read_noise_q=0.0),
        mvm={"adc_gain_std": 0.0, "adc_offset_std_lsb": 0.0, "adc_noise_lsb": 0.0}))
    cells, target, _ = ev.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    result = program_pairs(driver, cells, target, plus, minus)
    driver.clock.sleep_until(result.end_s + 25.0)
    x, y = data.x_test, data.y_test
    measured = ev.measured(x, y, mapping, driver.read(None)[cells][None, :],
                           drift_compensation=False)[0]
    chip = chip_accuracy(ev, driver, mapping, x, y)
    assert measured > 0.5, measured  # the network learned something to compare
    assert abs(chip - measured) < 0.03, (chip, measured)


@pytest.mark.slow
def test_chip_mode_and_reads_differ_by_their_read_noise_alone() -> None:
    """With read noise, on the residual CNN at the default timing, chip mode gave 90.54 %
    beside 85.26 % measured from one read: two draws of the read noise, not two numbers.
    Each MVM reads its region anew, milliseconds to a second of chip time after the read,
    so its white noise and its fastest 1/f decades are its own (at zero operation time
    every read and MVM fell in one instant and shared all but the white part, and the two
    agreed). Interleaved, reads and chip passes at one age give the same accuracy on
    average, and reads alone move it by points."""
    import torch

    from examples import networks
    from pcmlab.tasks import load_digits, train_classifier

    torch.manual_seed(0)
    data = load_digits(input_shape=(1, 8, 8))
    model = train_classifier(networks.resnet(), data.x_train, data.y_train, epochs=5,
                             weight_noise=0.03).eval()
    ev = AnalogEvaluator(model, data.x_train, Periphery())
    mapping = ev.mapping(128, 256, arrays=2)
    driver = MockDriver(config=MockChipConfig(
        geometry={"rows": 256, "cols": 256}, seed=3, faults=FaultRates.none(),
        mvm={"adc_gain_std": 0.0, "adc_offset_std_lsb": 0.0, "adc_noise_lsb": 0.0}))
    cells, target, _ = ev.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    result = program_pairs(driver, cells, target, plus, minus)
    driver.clock.sleep_until(result.end_s + 25.0)
    x, y = data.x_test, data.y_test
    measured, chip = [], []
    for _ in range(6):
        measured.append(ev.measured(x, y, mapping, driver.read(None)[cells][None, :],
                                    drift_compensation=False)[0])
        chip.append(chip_accuracy(ev, driver, mapping, x, y))
    measured, chip = np.array(measured), np.array(chip)
    age_s = driver.clock.now() - result.end_s
    print(f"reads {np.round(100 * measured, 2)} %, chip {np.round(100 * chip, 2)} %, "
          f"all within 25..{age_s:.2f} s after programming")
    assert age_s < 30.0  # one age: drift between them is below 0.5 %
    se = np.hypot(measured.std(ddof=1), chip.std(ddof=1)) / np.sqrt(measured.size)
    assert abs(chip.mean() - measured.mean()) < 3 * se + 0.005, (chip, measured)
    # a single read's noise moves this network's accuracy by points
    assert measured.max() - measured.min() > 0.02, measured


def test_physics_aware_training_trains_the_calibration_through_the_chip(digits_model) -> None:
    """A calibration knocked off (first layer's scales halved, offsets shifted) is trained
    back by refine: the forward through the chip, the gradient through the weights."""
    import torch

    from protocols.chip_inference import calibrate, refine

    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery())
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=4,
                                              faults=FaultRates.none()))
    mapping, end_s = deployed(ev, driver)
    driver.clock.sleep_until(end_s + 25.0)
    cal = calibrate(ev, driver, mapping, d.x_train[:256])
    first = mapping.layers[0].index
    cal.scale[first] = cal.scale[first] * 0.5
    cal.offset[first] = cal.offset[first] - 0.3 * cal.offset[first].abs().max() - 0.2
    x, y = d.x_test, d.y_test
    knocked = chip_accuracy(ev, driver, mapping, x, y, calibration=cal)
    flags = [p.requires_grad for p in ev.network.parameters()]
    weights = [p.detach().clone() for p in ev.network.parameters()]
    trained = refine(ev, driver, mapping, cal, d.x_train[:512], d.y_train[:512], steps=40)
    after = chip_accuracy(ev, driver, mapping, x, y, calibration=trained)
    assert knocked < 0.9 and after > knocked + 0.05, (knocked, after)
    assert not torch.equal(trained.scale[first], cal.scale[first])
    # the network's own parameters are left as they were
    assert [p.requires_grad for p in ev.network.parameters()] == flags
    assert all(torch.equal(p, w) for p, w in zip(ev.network.parameters(), weights,
                                                  strict=True))


def test_chip_in_the_loop_calibrates_on_training_inputs_never_the_test_set(
        digits_model, tmp_path: Path) -> None:
    """deploy_network with chip mode and no calibration inputs is refused, naming the
    argument (it used to fit the calibration on the test set it then scored); given
    training inputs, the file records which inputs calibrated it."""
    from pcmlab.errors import ConfigError
    from pcmlab.tasks import content_hash
    from protocols.deploy import DeployConfig, deploy_network
    from protocols.readout import ReadoutSchedule

    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery())
    cfg = DeployConfig(chip_in_the_loop=True, simulated_runs=0, calibration_samples=64,
                       schedule=ReadoutSchedule(t0_s=20.0, t_end_s=3600.0, n_readouts=2))

    def driver() -> MockDriver:
        return MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512},
                                                faults=FaultRates.none(), seed=2))

    with pytest.raises(ConfigError, match="x_calibration") as refused:
        deploy_network(driver(), ev, d.x_test, d.y_test, tmp_path / "x.h5", cfg)
    print("refused:", refused.value)
    assert "training inputs" in str(refused.value)
    assert not (tmp_path / "x.h5").exists()
    r = deploy_network(driver(), ev, d.x_test, d.y_test, tmp_path / "y.h5", cfg,
                       x_calibration=d.x_train)
    assert len(r.chip) == 2
    with RunReader(r.path) as run:
        used = run.config["chip_calibration_inputs"]
    print("recorded:", used)
    assert used == {"argument": "x_calibration", "samples": 64,
                    "sha256": content_hash(d.x_train[:64]), "same_as_test_inputs": False}


def test_chip_mode_records_when_its_passes_ran(digits_model) -> None:
    """Chip mode's drift reference and calibration take chip time after the readout: the
    row's time is when its test-set passes began, not the readout's."""
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery())
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=2,
                                              faults=FaultRates.none()))
    mapping, end_s = deployed(ev, driver)
    loop = ChipInTheLoop(ev, driver, mapping, d.x_test[:100], d.y_test[:100],
                         d.x_train[:64])
    driver.clock.sleep_until(end_s + 20.0)
    row = loop.at(20.0)
    after_s = driver.clock.now() - end_s
    print(f"readout at 20 s; chip-mode passes began at {row.time_s:.4f} s, ended by "
          f"{after_s:.4f} s")
    assert 20.0 < row.time_s < after_s
