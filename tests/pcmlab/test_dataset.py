"""pcmlab.open_run: a run file as a lazy xarray Dataset, with every array of /evaluation."""

from pathlib import Path

import h5py
import numpy as np

import pcmlab
from pcmlab.store.evaluation import write_evaluation
from protocols.chip_inference import CHIP_COLUMNS
from tests.pcmlab.test_store import make_run


def test_open_run_shows_the_chip_mode_accuracy(tmp_path: Path) -> None:
    """/evaluation/chip_* (deploy --mvm, demo) as written by the deployment: every column
    over its own time axis, not only the scalars."""
    path = tmp_path / "run.h5"
    make_run(path, rows=3)
    rng = np.random.default_rng(0)
    chip = {name: rng.uniform(0.5, 1.0, 3) for name in CHIP_COLUMNS}
    chip["time_s"] = np.array([20.0, 40.0, 60.0])
    write_evaluation(path, measured_time_s=chip["time_s"], measured_accuracy=[0.9] * 3,
                     chip=chip)
    with pcmlab.open_run(path) as ds, h5py.File(path, "r") as f:
        np.testing.assert_array_equal(ds.chip_mode_time_s.values, f["evaluation/chip_time_s"])
        assert ds.chip_mode_time_s.attrs["units"] == "s"
        for name in CHIP_COLUMNS[1:]:
            var = ds[f"chip_{name}"]
            assert var.dims == ("chip_mode_time_s",) and var.attrs["units"] == "1"
            np.testing.assert_array_equal(var.values, f[f"evaluation/chip_{name}"][...])
        table = pcmlab.accuracy_over_time(ds)
        assert {f"chip_{n}" for n in CHIP_COLUMNS[1:]} <= set(table.data_vars)
        # the readouts' own chip clock is not replaced by the chip mode's times
        np.testing.assert_array_equal(ds.chip_time_s.values, f["readouts/chip_time_s"])
