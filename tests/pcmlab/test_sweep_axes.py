"""No sweep axis is silently ignored: for every axis and training method, changing the
axis's value changes the simulated numbers (with the random stream held fixed), or the
sweep file is refused naming the axis and the method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pcmlab import sweep
from pcmlab.tasks import load_digits, train_classifier

VALUES = {"bits": [8, 2], "adc_bits": [8, 2], "dac_bits": [8, 2], "adc_gain": [1.0, 0.25],
          "eta": [0.0, 0.3], "programming_noise": [True, False], "drift": [True, False],
          "read_noise": [True, False], "drift_compensation": [True, False],
          "faults": [True, False], "calibration": ["published", "CAL"]}
# what the methods cannot honour, and so refuse (all other pairs change the result)
REFUSED = {("eta", "as-is"), ("eta", "off-the-shelf"), ("adc_gain", "full")}


class SameStream(sweep.EvalTask):
    """A task whose random stream does not depend on its point: what differs between two
    points is then only what the axis changed."""

    def stream(self) -> np.random.Generator:
        return np.random.default_rng(7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    data = load_digits(seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    model = train_classifier(model, data.x_train, data.y_train, epochs=8, seed=0)
    cal = tmp_path_factory.mktemp("cal") / "chip.toml"
    cal.write_text("read_noise_q = 0.05\ndrift_mu_range = [0.09, 0.2]\n")
    return sweep.Trained(model), data, str(cal)


def accuracy(config: sweep.SweepConfig, point: dict, base: sweep.Trained, data
             ) -> np.ndarray:
    """A point's accuracy through the sweep's own task functions, wired as run_sweep does."""
    key = sweep.training_key(point, config)
    if key[0] == "as-is":
        trained = base
    else:
        stage1 = (sweep.stage1_task(base, data, key[1], config.training)
                  if key[0] == "full" else None)
        trained = sweep.train_task(base, data, key, config.training, stage1)
    full = sweep.point_settings(point, config)
    task = SameStream(tuple(sorted(full.items())), 0, config.runs, config.seed,
                      tuple(config.times_s), config.rows, config.cols, (),
                      sweep._calibration(full["calibration"], None))
    return sweep.eval_task(task, trained, data, config)


@pytest.mark.parametrize("method", sweep.METHODS)
@pytest.mark.parametrize("axis", list(VALUES))
def test_every_axis_changes_the_result_or_is_refused(axis: str, method: str, setup) -> None:
    base, data, cal = setup
    values = [cal if v == "CAL" else v for v in VALUES[axis]]
    spec = {"axes": {"training": [method], axis: values}, "runs": 2, "runs_per_task": 2,
            "times_s": [25.0, 31536000.0],
            "training": {"stage1_epochs": 1, "stage2_epochs": 1, "eta": 0.05}}
    if (axis, method) in REFUSED:
        with pytest.raises(ValidationError) as err:
            sweep.SweepConfig.model_validate(spec)
        text = str(err.value)
        assert f"'{axis}'" in text and f"'{method}'" in text, text
        # and the refusal is due: the method's numbers do not depend on that axis
        config = sweep.SweepConfig.model_validate({**spec, "axes": {"training": [method]}})
        a, b = (accuracy(config, {"training": method, axis: v}, base, data) for v in values)
        np.testing.assert_array_equal(a, b)
        return
    config = sweep.SweepConfig.model_validate(spec)
    a, b = (accuracy(config, p, base, data) for p in config.points())
    print(axis, method, a.tolist(), b.tolist())
    assert not np.array_equal(a, b), f"axis {axis} changes nothing for training = {method}"


def test_the_methods_without_an_axis_are_refused_too() -> None:
    """The fixed method (no training axis) counts as well: weights given means as-is."""
    with pytest.raises(ValidationError, match=r"'eta'.*'as-is'"):
        sweep.SweepConfig.model_validate({"network": {"model": "m.pt", "weights": "w.pt"},
                                          "axes": {"eta": [0.0, 0.1]}})
    with pytest.raises(ValidationError, match=r"'adc_gain'.*'full'"):
        sweep.SweepConfig.model_validate({"axes": {"training": ["noise", "full"],
                                                   "adc_gain": [1.0, 2.0]}})


def test_the_mapping_takes_the_calibrations_g_max(setup, monkeypatch, tmp_path) -> None:
    """Weights map to the calibration's G_max (deploy does), not the default 25 µS; the
    part key holds it."""
    from pcmlab.evaluator import AnalogEvaluator
    from pcmlab.pcm_model import PCMCalibration

    base, data, _ = setup
    seen: list[float] = []
    place = AnalogEvaluator.mapping

    def spy(self, *args, **kwargs):
        mapping = place(self, *args, **kwargs)
        seen.append(mapping.g_max_us)
        return mapping

    monkeypatch.setattr(AnalogEvaluator, "mapping", spy)
    config = sweep.SweepConfig.model_validate({"axes": {"training": ["as-is"]}, "runs": 1,
                                               "runs_per_task": 1, "times_s": [25.0]})
    full = sweep.point_settings({"training": "as-is"}, config)
    results = []
    for g_max_us in (25.0, 50.0):
        task = SameStream(tuple(sorted(full.items())), 0, 1, 0, (25.0,), config.rows,
                          config.cols, (), PCMCalibration(g_max_us=g_max_us))
        results.append(sweep.eval_task(task, base, data, config))
    assert seen == [25.0, 50.0]
    # and the part key changes with G_max alone
    (tmp_path / "g50.toml").write_text("g_max_us = 50.0\n")
    (tmp_path / "g25.toml").write_text("g_max_us = 25.0\n")
    keys = [{k for k, _, _ in sweep.plan(sweep.SweepConfig.model_validate(
        {"axes": {"training": ["as-is"], "calibration": [f]}, "runs": 1,
         "runs_per_task": 1, "times_s": [25.0]}), base.model, data, tmp_path)[0]}
        for f in ("g25.toml", "g50.toml")]
    assert not keys[0] & keys[1]
