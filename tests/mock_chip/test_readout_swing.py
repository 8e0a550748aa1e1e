"""Why measured accuracy moves between neighbouring readouts of one chip: every read
carries its own 1/f read noise, as large as the statistical model's and nearly independent
between reads seconds apart, on top of a programmed state that has stopped relaxing at t0.

Measured on a residual CNN (examples.networks:resnet, noise-trained, default mock chip):
consecutive readouts at 20 s, 25 s, 2 min, 12 min, 1 h read 97.91, 96.52, 97.91, 96.24,
96.52 %; the model itself, for one programmed chip read ten times at 25 s, gives a spread
of 1.8 points (the same with noiseless drift compensation: the weights' read noise, not
the compensation factor, moves the accuracy). This test pins down the two properties of
the mock that make its readouts behave as the model's do."""

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.pcm_model import PCMModel
from protocols import program_and_verify

LEVELS = np.array([2.5, 5.0, 10.0, 15.0, 20.0])
MODEL = PCMModel()


@pytest.fixture(scope="module")
def reads():
    chip = MockDriver(config=MockChipConfig(geometry={"rows": 64, "cols": 160}, seed=3,
                                            faults=FaultRates.none()))
    n = chip.info.n_cells
    cells = np.arange(n, dtype=np.uint32)
    target = LEVELS[np.arange(n) % LEVELS.size].astype(np.float32)
    result = program_and_verify(chip, cells, target)
    rows = {}
    for t in (20.0, 25.0, 60.0):
        chip.clock.sleep_until(result.end_s + t)
        rows[t] = chip.read(cells).astype(np.float64)
    ok = result.converged
    return target, ok, rows


def test_a_single_read_has_the_models_read_noise(reads) -> None:
    target, ok, rows = reads
    for level in LEVELS:
        sel = ok & (target == level)
        diff = rows[25.0][sel] - rows[20.0][sel]
        diff -= diff.mean()  # the drift between the reads, the same for all
        model = np.hypot(MODEL.read_noise_sigma_us(level, level, 20.0),
                         MODEL.read_noise_sigma_us(level, level, 25.0))
        print(f"{level:5.1f} µS: rms(read 25 s - read 20 s) {diff.std():.3f} µS, "
              f"model (independent reads) {float(model):.3f} µS")
        # reads 5 s apart differ by what two independent model reads do (within 10 %)
        assert diff.std() == pytest.approx(float(model), rel=0.10)


def test_the_state_at_t0_has_stopped_relaxing(reads) -> None:
    target, ok, rows = reads
    for level in LEVELS:
        sel = ok & (target == level)
        spread = np.sqrt(np.mean((rows[20.0][sel] - level) ** 2))
        model = float(MODEL.total_sigma_us(level, 20.0))
        # from t0 on only drift moves the mean: (t / t0)^-nu, nu about mu_nu
        drop = 1 - rows[60.0][sel].mean() / rows[20.0][sel].mean()
        expect = 1 - 3.0 ** -float(MODEL.drift_nu_mean(level))
        print(f"{level:5.1f} µS: spread at t0 {spread:.3f} µS (model {model:.3f}); "
              f"20 s -> 60 s mean drop {100 * drop:.2f} % (drift alone {100 * expect:.2f} %)")
        assert spread == pytest.approx(model, rel=0.20)
        assert drop == pytest.approx(expect, abs=0.01)


@pytest.mark.slow
def test_a_full_method_network_swings_between_readouts_no_more_than_the_model_says() -> None:
    """Issue 21 item 14: for a network trained with the full method (learned DAC/ADC
    ranges, the trained periphery) the mock's readouts of one chip a minute apart move the
    drift-compensated accuracy no more than independent model reads of one programmed chip
    do (measured: digits CNN 0.38 against 0.41 points over 24 readouts; the residual CNN
    with BatchNorm 0.55 against 1.36 over 12: the mock's reads a minute apart share their
    slow 1/f terms)."""
    import torch

    from pcmlab.evaluator import AnalogEvaluator
    from pcmlab.tasks import load_digits, reference_cnn
    from pcmlab.training import TrainingConfig, train_analognets
    from protocols.program_verify import program_pairs

    torch.manual_seed(0)
    d = load_digits()
    res = train_analognets(reference_cnn(), d.x_train, d.y_train,
                           TrainingConfig(stage1_epochs=10, stage2_epochs=4))
    ev = AnalogEvaluator(res.model, d.x_train, res.periphery, ranges=res.ranges)
    mapping = ev.mapping(256, 512)
    cells, target, _ = ev.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    chip = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=1,
                                            faults=FaultRates.none()))
    result = program_pairs(chip, cells, target, plus, minus)
    times = 25.0 + 60.0 * np.arange(24)
    mock_rows = []
    for t in times:
        chip.clock.sleep_until(result.end_s + t)
        mock_rows.append(chip.read(None)[cells])
    rng = np.random.default_rng(0)
    g_t = target.astype(np.float64)
    g_prog, nu = MODEL.program(g_t, rng), MODEL.sample_nu(g_t, rng)
    model_rows = []
    for t in times:
        g = MODEL.drift(g_prog, nu, t)
        noise = MODEL.read_noise_sigma_us(g, g_t, t) * rng.standard_normal(g.shape)
        model_rows.append(np.maximum(g + noise, 0.0))
    x, y = d.x_test, d.y_test
    mock = ev.measured(x, y, mapping, np.array(mock_rows), time_s=times, t0_s=25.0)
    model = ev.measured(x, y, mapping, np.array(model_rows, dtype=np.float32),
                        time_s=times, t0_s=25.0)
    print(f"readout to readout: mock {100 * mock.std(ddof=1):.2f} points, model "
          f"{100 * model.std(ddof=1):.2f} points (means {100 * mock.mean():.2f}, "
          f"{100 * model.mean():.2f} %)")
    # the mock's read noise 2.5 times the model's: 0.83 against 0.41, this fails
    assert mock.std(ddof=1) <= 1.3 * model.std(ddof=1)
