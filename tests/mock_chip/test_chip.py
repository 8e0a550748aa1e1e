"""Mock chip: pulse physics, faults, limits, reproducibility, read noise memory."""

import math

import numpy as np
import pytest

from mock_chip import FaultRates, MockChip
from mock_chip.chip import OperationTimes
from mock_chip.physics import STUCK_RESET, STUCK_SET
from pcmlab.errors import ConfigError, LimitError
from pcmlab.pcm_model import PCMModel


def small_chip(**kw) -> MockChip:
    kw.setdefault("geometry", {"rows": 64, "cols": 128})
    kw.setdefault("faults", FaultRates.none())
    return MockChip(**kw)


def snapshot(chip: MockChip) -> list[np.ndarray]:
    d = chip.devices
    return [a.copy() for a in (d.g_prog_us, d.t_prog_s, d.nu, d.q_s, chip.pulse_count,
                               d.relax_deviate, d.nu_deviate)]


@pytest.mark.parametrize(
    ("cells", "kind", "amp", "width", "exc", "match"),
    [
        ([0, 1], "SET", 251.0, 500, LimitError, "above the chip's limit of 250"),
        ([0, 1], "RESET", 501.0, 50, LimitError, "above the chip's limit of 500"),
        ([0, 1], "SET", 100.0, -5, LimitError, "width -5.0 ns is outside"),
        ([0, 1], "SET", 100.0, float("nan"), LimitError, "width nan"),
        ([0, 99999], "SET", 100.0, 500, LimitError, "cell index 99999 is outside"),
        ([-1, 3], "SET", 100.0, 500, LimitError, "cell index -1"),
        ([0, 1], "SET", [100.0, float("nan")], 500, LimitError, "NaN"),
        ([0, 1], "SET", [100.0, -3.0], 500, LimitError, "negative"),
        ([0, 1, 2], "SET", [100.0, 120.0], 500, ConfigError, "2 values for 3 cells"),
        ([0.0, 1.0], "SET", 100.0, 500, ConfigError, "integers"),
        ([0, 1], "HEAT", 100.0, 500, ConfigError, "not one of SET, RESET"),
    ],
)
def test_bad_input_raises_and_leaves_state_unchanged(cells, kind, amp, width, exc, match) -> None:
    chip = small_chip()
    chip.apply_pulses(np.arange(100), "SET", 120.0, 500)
    before = snapshot(chip)
    with pytest.raises(exc, match=match):
        chip.apply_pulses(np.asarray(cells), kind, amp, width)
    for a, b in zip(before, snapshot(chip), strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_rejects_bad_cells() -> None:
    chip = small_chip()
    with pytest.raises(LimitError, match="outside the array"):
        chip.read(np.array([chip.n_cells]))
    with pytest.raises(ConfigError, match="1-D"):
        chip.read(np.zeros((2, 2), dtype=int))


def test_same_seed_same_results_other_seed_differs() -> None:
    def run(seed: int) -> np.ndarray:
        chip = small_chip(seed=seed)
        cells = np.arange(0, chip.n_cells, 3)
        chip.apply_pulses(cells, "SET", 140.0, 500)
        chip.clock.advance(100.0)
        return chip.read()

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_partial_set_approaches_g_inf() -> None:
    chip = small_chip(seed=1)
    cells = np.arange(chip.n_cells)
    amp = 110.0
    for _ in range(15):
        chip.apply_pulses(cells, "SET", amp, 500)
    d = chip.devices
    g_inf = d.g_sat_us * (1 - np.exp(-(amp - d.i_th_ua) / 60.0))
    rel = (d.g_prog_us - g_inf) / g_inf
    assert abs(np.median(rel)) < 0.03


def test_first_set_moves_about_half_way() -> None:
    chip = small_chip(seed=2)
    cells = np.arange(chip.n_cells)
    d = chip.devices
    g0 = d.g_prog_us.copy()
    chip.apply_pulses(cells, "SET", 150.0, 500)
    g_inf = d.g_sat_us * (1 - np.exp(-(150.0 - d.i_th_ua) / 60.0))
    frac = (d.g_prog_us - g0) / (g_inf - g0)
    assert np.median(frac) == pytest.approx(0.5, abs=0.03)


def test_state_above_g_inf_barely_moves() -> None:
    # back-to-back pulses (no time between them): what moves here is the SET physics
    # alone, not the relaxation a state goes through while the chip's commands take time
    chip = small_chip(seed=3, timing=OperationTimes(pulse_call_s=0, pulse_per_cell_s=0,
                                                    read_call_s=0, read_per_cell_s=0))
    cells = np.arange(chip.n_cells)
    for _ in range(10):
        chip.apply_pulses(cells, "SET", 200.0, 500)
    high = chip.devices.g_prog_us.copy()
    chip.apply_pulses(cells, "SET", 80.0, 500)  # G_inf(80 µA) is far below
    assert np.abs(chip.devices.g_prog_us - high).mean() < 0.1


def test_below_threshold_set_and_below_melt_reset_do_nothing() -> None:
    chip = small_chip(seed=4)
    cells = np.arange(chip.n_cells)
    chip.apply_pulses(cells, "SET", 150.0, 500)
    before = snapshot(chip)
    chip.apply_pulses(cells, "SET", 10.0, 500)  # far below the ~50 µA threshold
    chip.apply_pulses(cells, "RESET", 150.0, 50)  # far below the ~300 µA melting onset
    chip.apply_pulses(cells, "SET", 0.0, 500)  # amplitude 0 is valid, does nothing
    np.testing.assert_array_equal(before[0], chip.devices.g_prog_us)
    assert (chip.pulse_count == 4).all()


def test_reset_levels_fall_with_amplitude_and_full_reset_is_low() -> None:
    means = []
    for amp in (330.0, 380.0, 430.0, 470.0):
        chip = small_chip(seed=5)
        cells = np.arange(chip.n_cells)
        chip.apply_pulses(cells, "SET", 200.0, 500)
        chip.apply_pulses(cells, "RESET", amp, 50)
        means.append(float(chip.devices.g_prog_us.mean()))
    assert means == sorted(means, reverse=True)
    # full RESET: |N(0, 0.26)| has mean 0.26 sqrt(2/pi)
    assert means[-1] == pytest.approx(0.26 * math.sqrt(2 / math.pi), rel=0.05)


def test_reset_erases_history() -> None:
    chip = small_chip(seed=6)
    cells = np.arange(chip.n_cells)
    half = cells[: cells.size // 2]
    chip.apply_pulses(half, "SET", 220.0, 500)
    chip.apply_pulses(cells, "RESET", 400.0, 50)
    g = chip.devices.g_prog_us
    lo, hi = g[: cells.size // 2].mean(), g[cells.size // 2:].mean()
    assert lo == pytest.approx(hi, rel=0.05)


def test_duplicate_cells_get_two_pulses_in_order() -> None:
    chip = small_chip(seed=7)
    chip.apply_pulses(np.array([5, 5, 6]), "SET", [100.0, 200.0, 100.0], 500)
    assert chip.pulse_count[5] == 2 and chip.pulse_count[6] == 1
    # the second (stronger) pulse on cell 5 came after the first: cell 5 is well above 6
    assert chip.devices.g_prog_us[5] > chip.devices.g_prog_us[6] + 3


def test_fault_model_rates_and_behaviour() -> None:
    chip = MockChip(geometry={"rows": 512, "cols": 512}, seed=8)
    d = chip.devices
    n = chip.n_cells
    assert (d.fault == STUCK_RESET).mean() == pytest.approx(0.003, rel=0.15)
    assert (d.fault == STUCK_SET).mean() == pytest.approx(0.001, rel=0.25)
    assert d.weak.mean() == pytest.approx(0.005, rel=0.15)
    stuck_reset = np.flatnonzero(d.fault == STUCK_RESET)
    stuck_set = np.flatnonzero(d.fault == STUCK_SET)
    chip.apply_pulses(stuck_reset, "SET", 250.0, 500)
    chip.apply_pulses(stuck_set, "RESET", 500.0, 50)
    assert d.g_prog_us[stuck_reset].max() < 2.0
    assert d.g_prog_us[stuck_set].min() > 15.0
    assert d.g_sat_us[d.weak].max() < 0.6 * 32 * math.exp(0.5)
    assert n == 512 * 512


def test_drift_restarts_at_every_effective_pulse() -> None:
    chip = small_chip(seed=9)
    cells = np.arange(chip.n_cells)
    chip.apply_pulses(cells, "SET", 150.0, 500)
    chip.clock.advance(1e5)
    drifted = chip.true_conductance_us()
    chip.apply_pulses(cells, "SET", 150.0, 500)  # effective: the state moves and restarts
    assert (chip.devices.t_prog_s == chip.clock.now()).all()
    fresh = chip.true_conductance_us()
    assert fresh.mean() > drifted.mean() * 1.2


def test_read_noise_has_model_variance_and_1_over_f_memory() -> None:
    chip = small_chip(seed=10, geometry={"rows": 128, "cols": 256})
    model = PCMModel()
    cells = np.arange(chip.n_cells)
    chip.apply_pulses(cells, "SET", 120.0, 500)
    chip.clock.advance(86_400.0)  # a day after programming
    truth = chip.true_conductance_us()
    d = chip.devices
    age = chip.clock.now() - d.t_prog_s
    scale = truth * d.q_s * np.sqrt(model.read_noise_log_factor(age))
    a = (chip.read() - truth) / scale
    chip.clock.advance(1e-3)
    b = (chip.read() - truth) / scale
    chip.clock.advance(3 * 3600.0)
    truth_later = chip.true_conductance_us()
    age = chip.clock.now() - d.t_prog_s
    c = (chip.read() - truth_later) / (truth_later * d.q_s
                                       * np.sqrt(model.read_noise_log_factor(age)))
    assert a.std() == pytest.approx(1.0, rel=0.03)
    assert c.std() == pytest.approx(1.0, rel=0.03)
    assert np.corrcoef(a, b)[0, 1] > 0.4  # a millisecond apart: mostly the same noise
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.1  # hours apart: nearly independent


def test_reads_are_never_negative() -> None:
    chip = small_chip(seed=11)
    chip.apply_pulses(np.arange(chip.n_cells), "RESET", 480.0, 50)
    chip.clock.advance(1e7)
    assert chip.read().min() >= 0


@pytest.mark.slow
def test_holds_1024_by_2048_cells() -> None:
    chip = MockChip(geometry={"rows": 1024, "cols": 2048}, seed=12)
    n = chip.n_cells
    assert n == 1024 * 2048
    chip.apply_pulses(np.arange(n, dtype=np.uint32), "SET", 130.0, 500)
    chip.clock.advance(3600.0)
    g = chip.read()
    assert g.shape == (n,) and g.dtype == np.float32 and np.isfinite(g).all()
    assert chip.read(np.array([n - 1, 0]))[0] >= 0
