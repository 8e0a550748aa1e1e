"""The statistical model's samples follow its formulas."""

import math

import numpy as np
import pytest

from pcmlab.pcm_model import PCMCalibration, PCMModel, global_drift_compensation

MODEL = PCMModel()
N = 200_000


def folded_normal_mean_std(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and std of |N(mu, sigma)|."""
    phi = 0.5 * (1 + math.erf(-mu / (sigma * math.sqrt(2))))
    mean = sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * (
        1 - 2 * phi)
    var = mu * mu + sigma * sigma - mean * mean
    return mean, math.sqrt(var)


def test_prog_noise_formula_values() -> None:
    # Nandakumar 2019 polynomial at g_T = 0, 0.5 and 1
    assert MODEL.prog_noise_sigma_us(0.0) == pytest.approx(0.26348)
    assert MODEL.prog_noise_sigma_us(12.5) == pytest.approx(0.26348 + 1.9650 * 0.5 - 1.1731 * 0.25)
    assert MODEL.prog_noise_sigma_us(25.0) == pytest.approx(0.26348 + 1.9650 - 1.1731)


@pytest.mark.parametrize("g_t", [2.5, 7.5, 12.5, 17.5, 22.5])
def test_programming_samples_match_sigma_prog(g_t: float) -> None:
    rng = np.random.default_rng(1)
    g = MODEL.program(np.full(N, g_t), rng)
    expected = MODEL.prog_noise_sigma_us(g_t)
    assert g.mean() == pytest.approx(g_t, abs=4 * expected / math.sqrt(N))
    assert g.std() == pytest.approx(expected, rel=0.01)


def test_drift_exponent_mean_and_std_formulas() -> None:
    g = np.array([0.25, 2.5, 12.5, 25.0])
    g_rel = g / 25.0
    mu = np.clip(-0.0155 * np.log(g_rel) + 0.0244, 0.049, 0.1)
    sd = np.clip(-0.0125 * np.log(g_rel) - 0.0059, 0.008, 0.045)
    np.testing.assert_allclose(MODEL.drift_nu_mean(g), mu)
    np.testing.assert_allclose(MODEL.drift_nu_std(g), sd)
    # the clip bounds are reached at both ends
    assert MODEL.drift_nu_mean(25.0) == pytest.approx(0.049)
    assert MODEL.drift_nu_mean(0.01) == pytest.approx(0.1)


@pytest.mark.parametrize("g_t", [1.0, 5.0, 12.5, 22.5])
def test_nu_samples_are_folded_normal(g_t: float) -> None:
    rng = np.random.default_rng(2)
    nu = MODEL.sample_nu(np.full(N, g_t), rng)
    mean, std = folded_normal_mean_std(float(MODEL.drift_nu_mean(g_t)),
                                       float(MODEL.drift_nu_std(g_t)))
    assert nu.min() >= 0
    assert nu.mean() == pytest.approx(mean, rel=0.01)
    assert nu.std() == pytest.approx(std, rel=0.02)


def test_device_params_match_separate_formulas() -> None:
    rng = np.random.default_rng(3)
    g = rng.uniform(0.1, 25, 1000)
    dev = rng.standard_normal(1000)
    nu, q = MODEL.device_params(g, dev)
    np.testing.assert_allclose(nu, np.abs(MODEL.drift_nu_mean(g) + MODEL.drift_nu_std(g) * dev))
    np.testing.assert_allclose(q, MODEL.read_noise_q(g))


def test_drift_is_flat_before_t0_and_power_law_after() -> None:
    assert MODEL.drift(10.0, 0.05, 1.0) == pytest.approx(10.0)
    assert MODEL.drift(10.0, 0.05, 20.0) == pytest.approx(10.0)
    assert MODEL.drift(10.0, 0.05, 2000.0) == pytest.approx(10.0 * 100 ** -0.05)


@pytest.mark.parametrize("t_s", [25.0, 3600.0, 1e6])
def test_read_noise_samples_match_sigma_read(t_s: float) -> None:
    g_t = 10.0
    rng = np.random.default_rng(4)
    out = MODEL.simulate(np.full(N, g_t), [t_s], rng)[0]
    # total variance = drift-broadened programming spread + read noise; isolate read noise
    # by comparing with the same devices read twice at the same time
    rng = np.random.default_rng(4)
    out2 = MODEL.simulate(np.full(N, g_t), [t_s, t_s], rng)
    diff = out2[0] - out2[1]  # same programming and nu, independent read noise
    g_drift_mean = float(out.mean())
    expected = g_drift_mean * MODEL.read_noise_q(g_t) * math.sqrt(
        math.log((t_s + 250e-9) / (2 * 250e-9)))
    assert diff.std() / math.sqrt(2) == pytest.approx(expected, rel=0.03)


def test_read_noise_grows_with_log_time() -> None:
    s1 = MODEL.read_noise_sigma_us(10.0, 10.0, 1.0)
    s2 = MODEL.read_noise_sigma_us(10.0, 10.0, 1e6)
    assert s2 / s1 == pytest.approx(math.sqrt(math.log(1e6 / 5e-7) / math.log(1 / 5e-7)),
                                    rel=1e-6)


def test_simulated_reads_are_never_negative() -> None:
    rng = np.random.default_rng(5)
    assert MODEL.simulate(np.zeros(10_000), [25.0, 1e7], rng).min() >= 0


def test_calibration_changes_the_model() -> None:
    louder = PCMModel(PCMCalibration(prog_noise_coeffs_us=(0.5, 1.9650, -1.1731)))
    assert louder.prog_noise_sigma_us(0.0) == pytest.approx(0.5)


def test_global_drift_compensation_undoes_uniform_decay() -> None:
    y0 = np.array([1.0, -2.0, 3.0])
    assert global_drift_compensation(y0, 0.8 * y0) == pytest.approx(1.25)
    assert global_drift_compensation(y0, np.zeros(3)) == 1.0
    # responses of both signs decaying unequally: the factor sums magnitudes
    # (|2| + |-1|) / (|1.6| + |-0.9|) = 1.2, where signed sums would give 1 / 0.7
    assert global_drift_compensation([2.0, -1.0], [1.6, -0.9]) == pytest.approx(1.2)
