"""A cell's life across runs, from the files through the catalog: pulses counted at the
driver equal the cumulative count; open_run takes a run id."""

from __future__ import annotations

import numpy as np
import pytest

import pcmlab
from pcmlab.catalog import open_catalog
from pcmlab.cli import main
from protocols.characterize import CharacterizeConfig, characterize


class CountingDriver:
    """The mock, with every pulse counted per cell and kind where it reaches the driver."""

    def __init__(self, driver) -> None:
        self._d = driver
        self.info, self.clock = driver.info, driver.clock
        self.pulses = {"SET": np.zeros(driver.info.n_cells, np.int64),
                       "RESET": np.zeros(driver.info.n_cells, np.int64)}

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        n = self._d.apply_pulses(cells, kind, amplitude_ua, width_ns)
        np.add.at(self.pulses[str(getattr(kind, "name", kind)).upper()],
                  np.asarray(cells, np.int64), 1)
        return n

    def read(self, cells=None):
        return self._d.read(cells)

    def close(self) -> None:
        self._d.close()


def test_history_counts_every_pulse(catalog_url, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("PCMLAB_CATALOG", catalog_url)
    cfg = pcmlab.RunConfig(schedule=pcmlab.ReadoutSchedule(t0_s=20.0, t_end_s=600.0,
                                                           n_readouts=3))
    with pcmlab.MockDriver(config=pcmlab.MockChipConfig(
            seed=5, geometry={"rows": 16, "cols": 16})) as mock:
        chip = CountingDriver(mock)
        pcmlab.measure_run(chip, cfg, tmp_path / "a.h5", cells=np.arange(0, 40),
                           target_us=np.full(40, 12.0))
        pcmlab.measure_run(chip, cfg, tmp_path / "b.h5", cells=np.arange(30, 70),
                           target_us=np.linspace(0, 20, 40))
        characterize(chip, tmp_path / "c.h5", CharacterizeConfig(
            levels_us=(5.0, 15.0), cells_per_level=30, burst_reads=2, drift_reads=3))
        serial = mock.info.identity.split(",")[2]
    ds = pcmlab.cell_history(serial, "25:45", catalog_url)
    assert list(ds.kind.values) == ["run", "run", "characterization"]
    total = chip.pulses["SET"] + chip.pulses["RESET"]
    assert np.array_equal(ds.cumulative_pulses.values[-1], total[25:45])
    assert np.array_equal(ds.set_pulses.fillna(0).sum("run").values, chip.pulses["SET"][25:45])
    assert bool(ds.programmed.values[0, :15].all()) and not ds.programmed.values[0, 15:].any()
    assert ds.sizes["read"] == 3 + 3 + 5
    with pcmlab.RunReader(tmp_path / "b.h5") as b:  # the reads are the file's, unchanged
        g_b = b.readouts().conductance_us[:, :15]  # cells 30..44 of b
    assert np.array_equal(ds.conductance_us.values[3:6, 5:], g_b)
    assert np.isnan(ds.conductance_us.values[3:6, :5]).all()  # 25..29: not in b

    capsys.readouterr()
    assert main(["history", "--chip", serial, "--cells", "35", "--catalog", catalog_url]) == 0
    out = capsys.readouterr().out
    assert "cell 35" in out and str(int(total[35])) in out.split("cell 35")[1]
    with open_catalog(catalog_url) as cat:
        run_id = cat.list_runs(kind="characterization")[0]["run_id"]
    assert pcmlab.open_run(run_id[:8]).sizes["readout"] == 5
    assert main(["history", "--chip", "nope", "--cells", "1:2", "--catalog", catalog_url]) == 2


def test_a_run_on_a_chip_group_is_in_the_history_of_each_chip(catalog_url, monkeypatch,
                                                              tmp_path) -> None:
    """Two 16 x 16 chips as one group (chip 1's cell c is the group's 256 + c): the run is
    listed under each serial, and each chip's history has the pulses its own driver saw."""
    from drivers import ChipGroup

    monkeypatch.setenv("PCMLAB_CATALOG", catalog_url)
    cfg = pcmlab.RunConfig(schedule=pcmlab.ReadoutSchedule(t0_s=20.0, t_end_s=60.0,
                                                           n_readouts=2))
    chips = [CountingDriver(pcmlab.MockDriver(config=pcmlab.MockChipConfig(
        seed=s, geometry={"rows": 16, "cols": 16}))) for s in (5, 6)]
    group = ChipGroup(chips)
    cells = np.concatenate([np.arange(250, 256), np.arange(256, 262), np.arange(300, 304)])
    pcmlab.measure_run(group, cfg, tmp_path / "g.h5", cells=cells,
                       target_us=np.linspace(5, 20, cells.size))
    serials = [c.info.identity.split(",")[2] for c in chips]
    with open_catalog(catalog_url) as cat:
        for serial in serials:
            assert [r["path"] for r in cat.list_runs(chip=serial)] == [
                str((tmp_path / "g.h5").absolute())]
        assert {c["serial"]: c["firmware"] for c in cat.chips()} == {
            s: "0.1.0" for s in serials}
        # each chip holds its own cells only, in its own numbers
        assert [(r["start"], r["stop"]) for r in cat.cell_ranges(
            chip=serials[0], start=0, stop=10**6)] == [(250, 256)]
        assert [(r["start"], r["stop"]) for r in cat.cell_ranges(
            chip=serials[1], start=0, stop=10**6)] == [(0, 6), (44, 48)]
    # chip 1: local cells 0..5 and 44..47 (group 256..261, 300..303); chip 0: 250..255
    total = [c.pulses["SET"] + c.pulses["RESET"] for c in chips]
    assert total[1][0:6].min() > 0 and total[1][44:48].min() > 0
    two = pcmlab.cell_history(serials[1], "0:48", catalog_url)
    assert np.array_equal(two.cumulative_pulses.values[-1], total[1][0:48])
    assert int(two.programmed.values.sum()) == 10
    assert np.array_equal(two.set_pulses.fillna(0).values[0], chips[1].pulses["SET"][0:48])
    one = pcmlab.cell_history(serials[0], "0:256", catalog_url)
    assert np.array_equal(one.cumulative_pulses.values[-1], total[0])
    assert int(one.programmed.values.sum()) == 6  # 250..255 only, none of chip 1's
    with pcmlab.RunReader(tmp_path / "g.h5") as run:  # the reads of chip 1's cells
        g = run.readouts().conductance_us[:, 6:12]  # group cells 256..261
    assert np.array_equal(two.conductance_us.values[:, 0:6], g)


@pytest.mark.slow
def test_history_on_the_demos_chip_counts_every_pulse(tmp_path, monkeypatch, capsys) -> None:
    """``pcmlab demo`` (a network deployed on the mock), then ``pcmlab history`` on its
    chip: each cell's cumulative pulses are the pulses that reached the mock driver."""
    from drivers.mock import MockDriver

    catalog = str(tmp_path / "c.sqlite")
    applied = {}
    original = MockDriver.apply_pulses

    def counting(self, cells, kind, amplitude_ua, width_ns):
        n = original(self, cells, kind, amplitude_ua, width_ns)
        # every pulse the driver applied, 0 µA ones included (program-and-verify lowers an
        # overshooting cell's amplitude down to min_set_ua, 0 by default, and counts them)
        counts = applied.setdefault(self.info.identity, np.zeros(self.info.n_cells, np.int64))
        np.add.at(counts, np.asarray(cells, np.int64), 1)
        return n

    monkeypatch.setattr(MockDriver, "apply_pulses", counting)
    monkeypatch.chdir(tmp_path)
    assert main(["--catalog", catalog, "demo", "--output-dir", "demo", "--epochs", "1",
                 "--runs", "1", "--no-mvm"]) == 0
    ((identity, pulses),) = applied.items()
    touched = np.flatnonzero(pulses)
    start, stop = int(touched.min()), int(touched.max()) + 1
    ds = pcmlab.cell_history(identity.split(",")[2], f"{start}:{stop}", catalog)
    assert list(ds.kind.values) == ["deployment"]
    assert pulses.sum() > 1000  # the demo programmed the network
    assert np.array_equal(ds.cumulative_pulses.values[-1], pulses[start:stop])


# programs 64 cells on the mock and SIGKILLs itself as its pulse call number argv[3]
# begins (the pulses of the calls before it were applied: their counts saved beside)
KILLED_PROGRAMMING = """
import os, signal, sys
import numpy as np
import pcmlab
from drivers.mock import MockDriver
calls, counts = [0], np.zeros(64, np.int64)
original = MockDriver.apply_pulses
def counting(self, cells, kind, amplitude_ua, width_ns):
    calls[0] += 1
    if calls[0] == int(sys.argv[3]):
        np.save(sys.argv[2], counts)
        os.kill(os.getpid(), signal.SIGKILL)
    n = original(self, cells, kind, amplitude_ua, width_ns)
    np.add.at(counts, np.asarray(cells, np.int64), 1)
    return n
MockDriver.apply_pulses = counting
cfg = pcmlab.RunConfig(schedule=pcmlab.ReadoutSchedule(t0_s=20.0, t_end_s=600.0,
                                                       n_readouts=3))
with pcmlab.open_driver("mock://?rows=8&cols=8&seed=4") as d:
    pcmlab.measure_run(d, cfg, sys.argv[1], cells=np.arange(64),
                       target_us=np.linspace(0, 20, 64))
"""


def test_history_counts_the_pulses_of_a_run_killed_mid_programming(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    catalog = str(tmp_path / "c.sqlite")
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PCMLAB_CATALOG": catalog, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", KILLED_PROGRAMMING, str(tmp_path / "k.h5"),
                           str(tmp_path / "applied.npy"), "6"], env=env, timeout=120)
    assert proc.returncode == -9
    applied = np.load(tmp_path / "applied.npy")
    assert applied.sum() > 64  # the RESET of every cell and some SET iterations
    with open_catalog(catalog) as cat:
        (run,) = cat.list_runs()
        serial = run["chip_serial"]
    assert run["status"] == "killed"
    ds = pcmlab.cell_history(serial, "0:64", catalog)
    assert not ds.programmed.values.any()  # programming never finished
    assert np.array_equal(ds.cumulative_pulses.values[-1], applied)
