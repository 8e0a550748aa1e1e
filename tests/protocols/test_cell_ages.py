"""Each cell's own age: on the mock chip's default timing, programming takes chip time, so
cells programmed first are older when it ends, and the file records each cell's last
pulse as the chip's own record of it (where its drift restarts)."""

from pathlib import Path

import numpy as np

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.store import RunReader
from protocols.experiment import RunConfig, measure_run


def test_the_file_records_each_cells_own_age_as_the_chip_keeps_it(
        tmp_path: Path) -> None:
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 32, "cols": 64}, seed=2,
                                              faults=FaultRates.none()))
    cells = np.arange(1000, dtype=np.uint32)
    target = np.linspace(1, 20, cells.size).astype(np.float32)
    config = RunConfig(schedule={"t0_s": 20.0, "t_end_s": 1000.0, "n_readouts": 3})
    measure_run(driver, config, tmp_path / "r.h5", cells=cells, target_us=target)
    with RunReader(tmp_path / "r.h5") as run:
        prog = run.programming()
        ro = run.readouts()
    last, end = prog.last_pulse_s, prog.end_chip_time_s
    age_s = ro.chip_time_s[0] - last  # each cell's age at the first readout
    print(f"programming ended at {end:.4f} s chip time; {np.unique(last).size} distinct "
          f"last-pulse times; ages at the first readout {age_s.min():.4f}..{age_s.max():.4f} s")
    assert end > 0 and np.isfinite(last).all() and (last <= end).all()
    assert np.unique(last).size >= 5 and age_s.max() - age_s.min() > 1e-3
    np.testing.assert_allclose(ro.time_s[0], 20.0, atol=1e-3)  # anchored to the end
    assert (age_s >= ro.time_s[0]).all()
    # the chip's own record: a cell's drift restarts at its last effective pulse, which
    # is the file's last pulse for (nearly) every cell, never after it
    t_prog = driver.chip.devices.t_prog_s[cells]
    assert (t_prog <= last).all() and np.mean(t_prog == last) > 0.95


def test_the_simulated_mode_drifts_each_device_from_its_own_last_pulse(
        tmp_path: Path) -> None:
    """On a chip that programs slowly (1 ms per pulse: cells up to minutes older than the
    end of programming), the measured output of a layer whose weights drift (no drift
    compensation) is what the simulation gives at each device's own age; counted from the
    end of programming the simulation is younger, and higher. A deployment simulates at the
    ages its file records."""
    import torch

    from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches, Periphery
    from protocols.deploy import DeployConfig, deploy_network
    from protocols.program_verify import program_pairs
    from protocols.readout import ReadoutSchedule

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False))
    x, y = torch.rand(64, 256), torch.zeros(64, dtype=torch.long)
    ev = AnalogEvaluator(net, x, Periphery())
    mapping = ev.mapping(256, 256)

    def slow_chip() -> MockDriver:
        return MockDriver(config=MockChipConfig(
            geometry={"rows": 256, "cols": 256}, seed=1, faults=FaultRates.none(),
            timing={"pulse_per_cell_s": 1e-3}))

    driver = slow_chip()
    cells, target, _ = ev.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    result = program_pairs(driver, cells, target, plus, minus)
    offset_s = result.end_s - result.last_pulse_s
    times = [25.0, 100.0]
    rows = []
    for t in times:
        driver.clock.sleep_until(result.end_s + t)
        rows.append(driver.read(None)[cells])

    def metric(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return out.abs().mean()  # follows the weights' drift

    measured = ev.measured(x, y, mapping, np.array(rows), drift_compensation=False,
                           metric=metric)
    switches = NoiseSwitches(drift_compensation=False, faults=False)
    from_end = ev.simulate(x, y, mapping, times, 8, np.random.default_rng(0),
                           noise=switches, metric=metric)
    own_age = ev.simulate(x, y, mapping, times, 8, np.random.default_rng(0),
                          noise=switches, metric=metric, age_offset_s=offset_s)
    print(f"cells older than the end by up to {np.nanmax(offset_s):.1f} s; mean |output| "
          f"measured {measured}, simulated at each cell's age {own_age.mean} ± "
          f"{own_age.std}, from the end of programming {from_end.mean} ± {from_end.std}")
    assert np.nanmax(offset_s) > 60.0
    np.testing.assert_allclose(own_age.mean, measured, rtol=0.01)
    assert (from_end.mean > measured * 1.015).all()
    # a deployment's simulation takes the ages its file records (its accuracy on this
    # layer does not tell them apart: the ages it passes do)
    cfg = DeployConfig(simulated_runs=2, seed=3, schedule=ReadoutSchedule(
        t0_s=20.0, t_end_s=100.0, n_readouts=2))
    passed = []
    simulate = ev.simulate

    def spy(*args, **kwargs):
        passed.append(kwargs.get("age_offset_s"))
        return simulate(*args, **kwargs)

    ev.simulate = spy
    deploy_network(slow_chip(), ev, x, y, tmp_path / "d.h5", cfg)
    assert len(passed) == 1 and passed[0] is not None
    np.testing.assert_allclose(passed[0], offset_s, atol=1e-9)
