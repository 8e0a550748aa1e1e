"""Program-and-verify on the real protocol: convergence, spread, limits, any driver."""

import os
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.errors import ConfigError, LimitError
from pcmlab.pcm_model import PCMModel
from protocols import (
    ProgramVerifyConfig,
    StopToken,
    differential_targets,
    program_and_verify,
)

MODEL = PCMModel()


class RecordingDriver:
    """Wraps a driver, records every call, optionally waits per call like a slow link."""

    def __init__(self, inner: MockDriver, latency_s: float = 0.0) -> None:
        self.inner = inner
        self.latency_s = latency_s
        self.pulses: list[tuple[str, np.ndarray, np.ndarray, float]] = []
        self.reads = 0

    @property
    def info(self):
        return self.inner.info

    @property
    def clock(self):
        return self.inner.clock

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        time.sleep(self.latency_s)
        amp = np.broadcast_to(np.asarray(amplitude_ua, dtype=np.float64), np.shape(cells))
        self.pulses.append((str(getattr(kind, "value", kind)), np.array(cells), amp.copy(),
                            float(width_ns)))
        return self.inner.apply_pulses(cells, kind, amplitude_ua, width_ns)

    def read(self, cells=None):
        time.sleep(self.latency_s)
        self.reads += 1
        return self.inner.read(cells)

    def close(self):
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def mock(rows: int, cols: int, faults: FaultRates | None = None, seed: int = 0) -> MockDriver:
    return MockDriver(config=MockChipConfig(geometry={"rows": rows, "cols": cols},
                                            faults=faults or FaultRates.none(), seed=seed))


@pytest.mark.parametrize(("faults", "min_converged"),
                         [(FaultRates.none(), 0.995), (FaultRates(), 0.985)])
def test_convergence_and_spread_on_100k_cells(faults: FaultRates, min_converged: float) -> None:
    driver = mock(256, 512, faults, seed=31)
    n = driver.info.n_cells
    rng = np.random.default_rng(0)
    levels = np.arange(0, 10) * 2.5
    target = levels[rng.integers(0, levels.size, n)].astype(np.float32)
    cells = np.arange(n, dtype=np.uint32)
    result = program_and_verify(driver, cells, target)
    assert n >= 100_000
    assert result.converged_fraction_nonzero >= min_converged
    assert not result.interrupted
    if faults == FaultRates.none():
        driver.clock.sleep_until(result.end_s + MODEL.calibration.t0_s)
        state = driver.chip.true_conductance_us(cells)
        for level in levels[1:]:
            sel = (target == level) & result.converged
            spread = np.sqrt(np.mean((state[sel] - level) ** 2))
            assert spread == pytest.approx(MODEL.prog_noise_sigma_us(level), rel=0.2), level


def test_result_fields_are_per_cell_and_consistent() -> None:
    driver = mock(32, 64)
    cells = np.arange(500, dtype=np.uint32)[::-1]
    target = np.linspace(0, 24, 500).astype(np.float32)
    r = program_and_verify(driver, cells, target, ProgramVerifyConfig(record_traces=True))
    np.testing.assert_array_equal(r.cells, cells)
    ok = r.converged
    tol = 0.5 + 0.04 * target
    assert (np.abs(r.g_us - target)[ok] <= tol[ok] + 1e-6).all()
    assert (r.last_pulse_s <= r.end_s).all()
    assert r.iterations.max() <= 20 and r.iterations.dtype == np.uint16
    assert r.traces["conductance_us"].shape[1] == 500


def test_differential_pairs_zero_weights_stay_reset() -> None:
    driver = mock(32, 64, seed=4)
    n_pairs = 600
    plus = np.arange(n_pairs, dtype=np.uint32)
    minus = plus + n_pairs
    signed = np.random.default_rng(1).uniform(-20, 20, n_pairs).astype(np.float32)
    signed[::5] = 0.0
    cells, target = differential_targets(plus, minus, signed)
    r = program_and_verify(driver, cells, target)
    state = driver.chip.true_conductance_us(cells)
    pair_state = state[:n_pairs] - state[n_pairs:]
    conv = r.converged[:n_pairs] & r.converged[n_pairs:]
    # the device not carrying the sign, and both devices of zero weights, stay RESET
    idle = target == 0
    assert state[idle].max() < 1.5
    assert np.abs(pair_state - signed)[conv].max() < 3.0
    assert (np.sign(pair_state[np.abs(signed) > 3]) == np.sign(signed[np.abs(signed) > 3])).all()


def test_driver_calls_grow_with_iterations_not_cells() -> None:
    calls = {}
    for n in (200, 8000):
        rec = RecordingDriver(mock(128, 128, seed=5), latency_s=0.002)
        target = np.random.default_rng(2).uniform(0, 25, n).astype(np.float32)
        r = program_and_verify(rec, np.arange(n, dtype=np.uint32), target)
        iterations = int(r.iterations.max())
        calls[n] = len(rec.pulses) + rec.reads
        assert calls[n] == r.n_driver_calls
        assert calls[n] <= 3 * (iterations + 1)
    assert calls[8000] <= 2 * calls[200]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tol_abs=st.floats(0.05, 2.0), tol_rel=st.floats(0.0, 0.2), gain=st.floats(0.1, 50.0),
    max_set=st.floats(60.0, 250.0), backoff=st.floats(0.0, 40.0),
    max_iterations=st.integers(1, 25), reset_ua=st.floats(300.0, 500.0),
    set_width=st.floats(10.0, 10_000.0),
)
def test_no_pulse_ever_exceeds_the_limits(tol_abs, tol_rel, gain, max_set, backoff,
                                          max_iterations, reset_ua, set_width) -> None:
    cfg = ProgramVerifyConfig(tolerance_abs_us=tol_abs, tolerance_rel=tol_rel,
                              gain_ua_per_us=gain, max_set_ua=max_set,
                              overshoot_backoff_ua=backoff, max_iterations=max_iterations,
                              reset_amplitude_ua=reset_ua, set_width_ns=set_width)
    rec = RecordingDriver(mock(16, 16, seed=6))
    limits = rec.info.limits
    target = np.random.default_rng(3).uniform(0, 25, 256).astype(np.float32)
    program_and_verify(rec, np.arange(256, dtype=np.uint32), target, cfg)
    assert rec.pulses
    for kind, _cells, amp, width in rec.pulses:
        cap = limits.max_set_ua if kind == "SET" else limits.max_reset_ua
        assert amp.min() >= 0 and amp.max() <= cap
        if kind == "SET":
            assert amp.max() <= max_set
        assert limits.min_width_ns <= width <= limits.max_width_ns


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tolerance_abs_us": -0.1}, "tolerance_abs_us"),
     ({"max_iterations": 0}, "max_iterations"),
     ({"gain_ua_per_us": 0}, "gain_ua_per_us"),
     ({"tolerance_abs_us": 0, "tolerance_rel": 0}, "no cell could ever converge"),
     ({"min_set_ua": 200, "max_set_ua": 100}, "min_set_ua")],
)
def test_bad_configurations_fail_at_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ProgramVerifyConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_set_ua": 300.0}, "above the chip's SET limit of 250"),
     ({"reset_amplitude_ua": 600.0}, "above the chip's RESET limit of 500"),
     ({"set_width_ns": 5.0}, "set_width_ns=5.0 ns is outside")],
)
def test_settings_beyond_the_chip_are_refused_before_any_pulse(kwargs, match) -> None:
    rec = RecordingDriver(mock(8, 8))
    with pytest.raises(LimitError, match=match):
        program_and_verify(rec, np.arange(4), np.ones(4), ProgramVerifyConfig(**kwargs))
    assert rec.pulses == [] and rec.reads == 0


@pytest.mark.parametrize(
    ("cells", "targets", "match"),
    [(np.arange(3), np.ones(2), "3 cells but 2 targets"),
     (np.array([1, 1]), np.ones(2), "appears twice"),
     (np.arange(2), np.array([1.0, 30.0]), r"above the chip's 25.0 µS, the first 30.0 µS"),
     (np.arange(2), np.array([1.0, -2.0]), "minus device"),
     (np.arange(2), np.array([1.0, np.nan]), "NaN"),
     (np.array([0, 64]), np.ones(2), "cell index 64")],
)
def test_bad_targets(cells, targets, match) -> None:
    with pytest.raises((ConfigError, LimitError), match=match):
        program_and_verify(mock(8, 8), cells, targets)


def test_stop_token_returns_partial_result() -> None:
    driver = mock(64, 64)
    stop = StopToken()

    def on_progress(p) -> None:
        if p.iteration == 2:
            stop.request()

    target = np.random.default_rng(4).uniform(5, 25, 4096).astype(np.float32)
    r = program_and_verify(driver, np.arange(4096), target, progress=on_progress, stop=stop)
    assert r.interrupted
    assert r.iterations.max() == 2
    assert 0 < r.converged.mean() < 0.99


def test_ctrl_c_waits_for_the_driver_call_to_finish() -> None:
    class InterruptingDriver(RecordingDriver):
        def read(self, cells=None):
            if self.reads == 1:  # Ctrl-C arrives in the middle of the second read
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
            return super().read(cells)

    rec = InterruptingDriver(mock(32, 32))
    target = np.random.default_rng(5).uniform(5, 25, 1024).astype(np.float32)
    # what the handler was (a shell's background job starts with SIGINT ignored)
    before = signal.getsignal(signal.SIGINT)
    r = program_and_verify(rec, np.arange(1024), target)
    assert r.interrupted
    assert rec.reads == 2  # the read in flight completed; nothing after it was sent
    assert np.isfinite(r.g_us).all()
    # the handler is restored afterwards
    assert signal.getsignal(signal.SIGINT) is before


class _Recording:
    """A driver that records the size of every call, and costs latency + per-cell time."""

    def __init__(self, driver, latency_s: float = 0.0, per_cell_s: float = 0.0) -> None:
        self.driver, self.latency_s, self.per_cell_s = driver, latency_s, per_cell_s
        self.info, self.clock = driver.info, driver.clock
        self.sizes: list[int] = []

    def _cost(self, n: int) -> None:
        import time

        self.sizes.append(n)
        if self.latency_s or self.per_cell_s:
            time.sleep(self.latency_s + self.per_cell_s * n)

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        self._cost(np.size(cells))
        return self.driver.apply_pulses(cells, kind, amplitude_ua, width_ns)

    def read(self, cells=None):
        self._cost(self.info.n_cells if cells is None else np.size(cells))
        return self.driver.read(cells)


def test_batches_as_configured_and_as_measured() -> None:
    from drivers import MockDriver
    from mock_chip import FaultRates, MockChipConfig

    def chip():
        return MockDriver(config=MockChipConfig(geometry={"rows": 64, "cols": 256}, seed=4,
                                                faults=FaultRates.none()))

    cells = np.arange(10_000, dtype=np.uint32)
    target = np.random.default_rng(0).uniform(0, 25, cells.size).astype(np.float32)
    rec = _Recording(chip())
    r = program_and_verify(rec, cells, target, ProgramVerifyConfig(max_batch_cells=700))
    assert max(rec.sizes) == 700 and r.converged_fraction_nonzero > 0.99
    # "auto": 1 ms + 20 us per cell, a budget of 50 ms -> about 2 450 cells per call
    rec = _Recording(chip(), latency_s=1e-3, per_cell_s=2e-5)
    r = program_and_verify(rec, cells, target,
                           ProgramVerifyConfig(max_batch_cells="auto", call_budget_s=0.05))
    big = max(rec.sizes)
    assert 1000 < big < 5000, big
    assert r.converged_fraction_nonzero > 0.99
    with pytest.raises(ValueError, match="max_batch_cells=0"):
        ProgramVerifyConfig(max_batch_cells=0)
