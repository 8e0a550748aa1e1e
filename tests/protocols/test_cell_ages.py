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
