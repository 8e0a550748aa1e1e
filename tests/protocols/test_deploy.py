"""Deploying the reference network on the mock chip: measured beside simulated."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.errors import ConfigError
from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.nn_model import save_model_file
from pcmlab.pcm_model import PCMCalibration, PCMModel
from pcmlab.store import RunReader
from protocols.deploy import DeployConfig, deploy_network, evaluate_file
from protocols.program_verify import program_and_verify, program_pairs


def chip(faults: FaultRates, seed: int = 0, rows: int = 256, cols: int = 512) -> MockDriver:
    return MockDriver(config=MockChipConfig(geometry={"rows": rows, "cols": cols},
                                            faults=faults, seed=seed))


@pytest.fixture(scope="module")
def deployed(digits_model, tmp_path_factory):
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery(dac_bits=8, adc_bits=8))
    path = tmp_path_factory.mktemp("deploy") / "run.h5"
    result = deploy_network(chip(FaultRates.none(), seed=5), ev, d.x_test, d.y_test, path,
                            DeployConfig(simulated_runs=25, seed=1),
                            pcm=PCMModel(PCMCalibration().without_faults()))
    return ev, result


def test_measured_accuracy_within_two_points_of_simulated(deployed) -> None:
    _, r = deployed
    assert r.readouts_taken == r.time_s.size == 13
    assert r.time_s[0] == pytest.approx(20.0, abs=1.0)  # the reference readout at t0
    assert r.time_s[-1] == pytest.approx(365 * 86400.0)
    for t in (25.0, 3600.0, 86400.0, 30 * 86400.0):  # the paper's points are all read
        assert np.isclose(r.time_s, t).any()
    diff = np.abs(r.measured_accuracy - r.simulated.mean)
    assert diff.max() <= 0.02, (r.measured_accuracy, r.simulated.mean)
    assert r.measured_accuracy.min() > 0.9


def test_file_holds_network_and_evaluation(deployed) -> None:
    _, r = deployed
    with RunReader(r.path) as run:
        assert run.network_mapping_json is not None
        ev = run.evaluation()
        np.testing.assert_allclose(ev["measured_accuracy"], r.measured_accuracy)
        np.testing.assert_allclose(ev["simulated_accuracy_mean"], r.simulated.mean)
        assert ev["simulated_accuracy_runs"].shape == (25, 13)
        assert ev["ideal_accuracy"] == pytest.approx(r.ideal_accuracy)
        layers = run.targets().layer
        assert set(np.unique(layers)) == {lm.index for lm in r.mapping.layers}


def test_drift_compensation_helps_on_the_chip(deployed, digits_model) -> None:
    ev, r = deployed
    d = digits_model.data
    with RunReader(r.path) as run:
        rows = run.readouts().conductance_us
    with_gdc = ev.measured(d.x_test, d.y_test, r.mapping, rows[[0, -1]])
    without = ev.measured(d.x_test, d.y_test, r.mapping, rows[[0, -1]],
                          drift_compensation=False)
    assert with_gdc[1] > without[1] + 0.05


def test_evaluate_file_refuses_foreign_files_and_models(deployed, digits_model,
                                                        tmp_path: Path) -> None:
    ev, r = deployed
    d = digits_model.data
    _, acc = evaluate_file(r.path, ev, d.x_test, d.y_test)
    np.testing.assert_allclose(acc, r.measured_accuracy)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ev_other = AnalogEvaluator(other, d.x_train)
    with pytest.raises(ConfigError, match="does not match the measurement file"):
        evaluate_file(r.path, ev_other, d.x_test, d.y_test)
    plain = tmp_path / "plain.toml"
    plain.write_text('[chip.geometry]\nrows = 16\ncols = 16\n[schedule]\nn_readouts = 2\n')
    out = tmp_path / "plain.h5"
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "run", str(plain), "-o",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ConfigError, match="no /network"):
        evaluate_file(out, ev, d.x_test, d.y_test)


def test_model_larger_than_the_array_without_tiling(digits_model, tmp_path: Path) -> None:
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train)
    with pytest.raises(ConfigError, match="allow tiling"):
        deploy_network(chip(FaultRates.none(), rows=128, cols=1024), ev, d.x_test, d.y_test,
                       tmp_path / "x.h5", DeployConfig(tiling=False, simulated_runs=0))
    assert not (tmp_path / "x.h5").exists()
    # with tiling the same chip takes it, the 256-input layer split in two row tiles
    r = deploy_network(chip(FaultRates.none(), rows=128, cols=1024), ev, d.x_test, d.y_test,
                       tmp_path / "y.h5", DeployConfig(simulated_runs=0))
    assert max(len(lm.tiles) for lm in r.mapping.layers) == 2
    assert r.measured_accuracy[0] > 0.9


def test_pair_compensation_cancels_stuck_set_devices() -> None:
    faults = FaultRates(stuck_reset=0.0, stuck_set=0.05, weak=0.0)
    n = 4000
    rng = np.random.default_rng(2)
    signed = rng.uniform(-15, 15, n).astype(np.float32)
    cells = np.arange(2 * n, dtype=np.uint32)
    target = np.concatenate([np.maximum(signed, 0), np.maximum(-signed, 0)])
    plus, minus = np.arange(n), np.arange(n, 2 * n)
    errors = {}
    for compensate in (False, True):
        driver = chip(faults, seed=3, rows=64, cols=128)
        if compensate:
            program_pairs(driver, cells, target, plus, minus)
        else:
            program_and_verify(driver, cells, target)
        g = driver.chip.true_conductance_us(cells)
        errors[compensate] = np.abs((g[plus] - g[minus]) - signed)
    # without compensation a stuck-SET partner is an error of its whole conductance
    assert (errors[False] > 10).sum() > 50
    assert (errors[True] > 10).sum() < (errors[False] > 10).sum() / 3


def test_cli_deploy_and_evaluate(digits_model, tmp_path: Path) -> None:
    model = save_model_file(digits_model.model, tmp_path / "m.pt", input_shape=(1, 8, 8))
    d = digits_model.data
    data = tmp_path / "d.npz"
    np.savez(data, x_test=d.x_test.numpy()[:200], y_test=d.y_test.numpy()[:200],
             x_train=d.x_train.numpy(), y_train=d.y_train.numpy())
    out = tmp_path / "dep.h5"
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "deploy", str(model),
                           "--data", str(data), "-o", str(out), "--runs", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "1 y" in proc.stdout and "measured %" in proc.stdout

    def evaluate(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pcmlab.cli", "evaluate", str(out),
                               "--model", str(model), *extra], capture_output=True,
                              text=True, timeout=600)

    with_data = evaluate("--data", str(data))
    assert with_data.returncode == 0, with_data.stderr
    assert "is not the data" not in with_data.stdout
    # without --data: the data the deployment recorded, found and checked by its hash
    recorded = evaluate()
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout == with_data.stdout
    # other data: said in one line, and evaluated
    other = tmp_path / "other.npz"
    np.savez(other, x_test=d.x_test.numpy()[200:300], y_test=d.y_test.numpy()[200:300])
    proc = evaluate("--data", str(other))
    assert proc.returncode == 0, proc.stderr
    assert f"note: --data {other} is not the data" in " ".join(proc.stdout.split())
    # the recorded file changed, or gone: refused, naming what was used and how to pass it
    np.savez(data, x_test=d.x_test.numpy()[:100], y_test=d.y_test.numpy()[:100])
    proc = evaluate()
    assert proc.returncode == 2 and "is not the data" in proc.stderr, proc.stderr
    data.unlink()
    proc = evaluate()
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"{data}: 200 test samples" in message and "pass it with --data" in message
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_test=np.zeros((3, 5)), y_test=np.zeros(3, dtype=int))
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "evaluate", str(out),
                           "--model", str(model), "--data", str(bad)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "x_test has shape (3, 5)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_network_larger_than_one_chip_runs_on_a_group_of_chips(digits_model,
                                                                  tmp_path: Path) -> None:
    from drivers import ChipGroup

    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train)
    # the digits CNN needs 19 472 devices: more than a 64 x 256 chip has
    with pytest.raises(ConfigError, match="at least 2 arrays"):
        deploy_network(chip(FaultRates.none(), rows=64, cols=256), ev, d.x_test, d.y_test,
                       tmp_path / "x.h5", DeployConfig(simulated_runs=0))
    chips = [chip(FaultRates.none(), seed=s, rows=64, cols=256) for s in (5, 6)]
    group = ChipGroup(chips)
    assert group.info.geometry.rows == 128 and group.info.arrays == 2
    r = deploy_network(group, ev, d.x_test, d.y_test, tmp_path / "g.h5",
                       DeployConfig(simulated_runs=10, seed=1))
    assert r.mapping.arrays == 2 and r.mapping.rows == 64
    used = r.mapping.utilization_per_array()
    assert len(used) == 2 and min(used) > 0.1
    # both chips were programmed: each holds its share of the targets (drifted by a year,
    # so in proportion)
    with RunReader(r.path) as run:
        cells, target = run.targets().cell, run.targets().conductance_us
    for k, c in enumerate(chips):
        mine = (cells // (64 * 256)) == k
        g = c.chip.true_conductance_us((cells[mine] - k * 64 * 256).astype(np.uint32))
        assert mine.sum() > 5000 and np.corrcoef(g, target[mine])[0, 1] > 0.95
    # one schedule for both: the chips' clocks moved together to a year
    assert abs(chips[0].clock.now() - chips[1].clock.now()) < 1.0
    assert r.measured_accuracy.min() > 0.9
    assert np.abs(r.measured_accuracy - r.simulated.mean).max() < 0.03


def test_a_network_larger_than_the_chip_deploys_in_successive_parts(digits_model,
                                                                    tmp_path: Path) -> None:
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train)
    driver = chip(FaultRates.none(), seed=5, rows=64, cols=256)
    r = deploy_network(driver, ev, d.x_test, d.y_test, tmp_path / "p.h5",
                       DeployConfig(parts=True, simulated_runs=10, seed=1))
    assert [p.name for p in r.part_paths] == ["p.h5", "p.part2.h5"]
    assert r.mapping.arrays == 2 and r.readouts_taken == r.time_s.size == 13
    # each part is a whole run of its own, programmed after the one before was read
    ends = []
    for p in r.part_paths:
        with RunReader(p) as run:
            assert run.readouts().n == 13
            ends.append(float(run.programming().end_chip_time_s))
            assert run.config["parts"] == ["p.h5", "p.part2.h5"]
    assert ends[1] >= ends[0] + 365 * 86400.0  # after the first part's last readout
    assert r.measured_accuracy.min() > 0.9
    assert np.abs(r.measured_accuracy - r.simulated.mean).max() < 0.03
    # the evaluator combines the parts; without the second it refuses
    _, acc = evaluate_file(r.path, ev, d.x_test, d.y_test)
    np.testing.assert_allclose(acc, r.measured_accuracy)
    r.part_paths[1].rename(tmp_path / "elsewhere.h5")
    with pytest.raises(ConfigError, match=r"p.part2.h5 is missing"):
        evaluate_file(r.path, ev, d.x_test, d.y_test)


def test_one_drift_reference_t0_the_files_for_deployment_and_evaluate_file(
        digits_model, tmp_path: Path) -> None:
    """A calibration whose t0 is 60 s: the deployment records it, and evaluate_file
    (pcmlab evaluate) references drift compensation to the same readout as the
    deployment's own /evaluation."""
    from pcmlab.pcm_model import PCMCalibration, PCMModel
    from protocols.readout import ReadoutSchedule

    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, d.x_train, Periphery(dac_bits=6, adc_bits=6))
    schedule = ReadoutSchedule(t0_s=20.0, t_end_s=365 * 86400.0, n_readouts=2,
                               include_s=(60.0,))
    r = deploy_network(chip(FaultRates.none(), seed=5), ev, d.x_test, d.y_test,
                       tmp_path / "t0.h5", DeployConfig(simulated_runs=0, schedule=schedule),
                       pcm=PCMModel(PCMCalibration(t0_s=60.0)))
    np.testing.assert_allclose(r.time_s, [20.0, 60.0, 365 * 86400.0], rtol=1e-3)
    with RunReader(r.path) as run:
        rows = run.readouts().conductance_us
        recorded_t0_s = run.config.get("drift_t0_s")
        stored = run.evaluation()
    by_t0 = {t0: ev.measured(d.x_test, d.y_test, r.mapping, rows, time_s=r.time_s, t0_s=t0)
             for t0 in (20.0, 60.0)}
    print("measured with t0 = 20 s:", by_t0[20.0], "t0 = 60 s:", by_t0[60.0])
    assert not np.array_equal(by_t0[20.0], by_t0[60.0])  # the reference matters here
    _, evaluated = evaluate_file(r.path, ev, d.x_test, d.y_test)
    print("deployment:", stored["measured_accuracy"], "evaluate_file:", evaluated)
    np.testing.assert_array_equal(stored["measured_accuracy"], by_t0[60.0])
    np.testing.assert_array_equal(evaluated, stored["measured_accuracy"])
    assert "60 s" in stored["drift_compensation_reference"] and recorded_t0_s == 60.0
