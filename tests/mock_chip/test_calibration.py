"""The mock chip meets the calibrated model: programmed spread, convergence, drift.

The program-and-verify loop here is a deliberately simple reference, independent of
``protocols``, so that the chip's calibration is tested on its own.
"""

import numpy as np
import pytest

from mock_chip import FaultRates, MockChip
from pcmlab.pcm_model import PCMModel

MODEL = PCMModel()
LEVELS = np.arange(1, 10) * 2.5  # 2.5 ... 22.5 µS
CELLS_PER_LEVEL = 1200


def reference_program_verify(chip: MockChip, cells: np.ndarray, target: np.ndarray,
                             max_iterations: int = 20) -> np.ndarray:
    """RESET, then SET with amplitude feedback on the verify error; overshoot -> RESET and
    lower. Window 0.5 µS + 4 % (about 1 µS on average over the range)."""
    tol = 0.5 + 0.04 * target
    amp = 50.0 - 60.0 * np.log1p(-np.minimum(target, 31.0) / 32.0)
    gain = np.full(target.shape, 2.0)
    chip.apply_pulses(cells, "RESET", 470.0, 50)
    converged = np.zeros(cells.size, dtype=bool)
    reset_next = np.zeros(cells.size, dtype=bool)
    for _ in range(max_iterations):
        live = np.flatnonzero(~converged)
        if live.size == 0:
            break
        to_reset = live[reset_next[live]]
        if to_reset.size:
            chip.apply_pulses(cells[to_reset], "RESET", 470.0, 50)
        chip.apply_pulses(cells[live], "SET", np.clip(amp[live], 0, 250), 500)
        err = target[live] - chip.read(cells[live])
        converged[live] = np.abs(err) <= tol[live]
        over = err < -tol[live]
        reset_next[live] = over
        step = np.where(over, gain[live] * err - 5.0, gain[live] * err)
        amp[live] = np.clip(amp[live] + step, 0, 250)
        gain[live[over]] *= 0.5
    return converged


def program_levels(faults: FaultRates, seed: int):
    chip = MockChip(geometry={"rows": 96, "cols": 128}, faults=faults, seed=seed)
    target = np.repeat(LEVELS, CELLS_PER_LEVEL).astype(np.float32)
    cells = np.arange(target.size, dtype=np.uint32)
    converged = reference_program_verify(chip, cells, target)
    return chip, cells, target, converged


@pytest.mark.parametrize(("faults", "min_converged"),
                         [(FaultRates.none(), 0.995), (FaultRates(), 0.985)])
def test_convergence_of_nonzero_cells(faults: FaultRates, min_converged: float) -> None:
    _, _, _, converged = program_levels(faults, seed=21)
    assert converged.mean() >= min_converged


def test_programmed_spread_matches_sigma_prog() -> None:
    chip, cells, target, converged = program_levels(FaultRates.none(), seed=22)
    chip.clock.advance(MODEL.calibration.t0_s)  # the programmed state as the model sees it
    state = chip.true_conductance_us(cells)
    reads = chip.read(cells)
    for level in LEVELS:
        sel = (target == level) & converged
        spread = np.sqrt(np.mean((state[sel] - level) ** 2))
        assert spread == pytest.approx(MODEL.prog_noise_sigma_us(level), rel=0.2), level
        # and so a single read at t0 has the model's total spread at t0
        read_spread = np.sqrt(np.mean((reads[sel] - level) ** 2))
        assert read_spread == pytest.approx(MODEL.total_sigma_us(level, MODEL.calibration.t0_s),
                                            rel=0.2), level


def test_median_drift_exponent_per_level_matches_mu_nu() -> None:
    chip, cells, target, converged = program_levels(FaultRates.none(), seed=23)
    t_end = chip.clock.now()
    times = np.geomspace(20.0, 1e6, 12)
    reads = []
    for t in times:
        chip.clock.sleep_until(t_end + t)
        reads.append(chip.read(cells))
    log_g = np.log(np.maximum(np.stack(reads), 1e-3))
    log_t = np.log(times)
    x = log_t - log_t.mean()
    slope = (x[:, None] * (log_g - log_g.mean(axis=0))).sum(axis=0) / (x * x).sum()
    nu = -slope
    for level in LEVELS:
        sel = (target == level) & converged
        assert np.median(nu[sel]) == pytest.approx(float(MODEL.drift_nu_mean(level)),
                                                   rel=0.15), level
