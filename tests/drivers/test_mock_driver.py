"""The in-process driver fulfils the CrossbarDriver contract and checks limits first."""

import numpy as np
import pytest

from drivers import ChipInfo, CrossbarDriver, MockDriver, WallClock
from mock_chip import MockChipConfig
from pcmlab.errors import LimitError, TransportError


@pytest.fixture
def driver() -> MockDriver:
    return MockDriver(config=MockChipConfig(geometry={"rows": 32, "cols": 64}, seed=3))


def test_is_a_crossbar_driver_with_info(driver: MockDriver) -> None:
    assert isinstance(driver, CrossbarDriver)
    info = driver.info
    assert isinstance(info, ChipInfo)
    assert info.n_cells == 32 * 64 and info.virtual_clock
    assert info.identity.startswith("pcmlab,MockPCM-32x64")
    assert info.limits.max_set_ua == 250.0


def test_read_whole_array_and_cells(driver: MockDriver) -> None:
    g = driver.read()
    assert g.shape == (32 * 64,) and g.dtype == np.float32
    assert driver.read([5, 1]).shape == (2,)


def test_limits_checked_before_the_chip_sees_anything(driver: MockDriver,
                                                      monkeypatch) -> None:
    """The driver's own check refuses: the chip is never called (it would refuse with the
    same words, so only counting its calls tells the two apart)."""
    counts = driver.chip.pulse_count.copy()
    calls = []
    real = driver.chip._apply_checked  # the chip's pulse entry once the limits are checked
    monkeypatch.setattr(driver.chip, "_apply_checked",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    for args in (([0, 1], "SET", [100.0, 300.0], 500), ([0], "RESET", 900.0, 50),
                 ([0], "SET", float("nan"), 500), ([0], "SET", 100.0, 1e9),
                 ([10**7], "SET", 100.0, 500)):
        with pytest.raises(LimitError):
            driver.apply_pulses(*args)
    assert calls == []
    np.testing.assert_array_equal(counts, driver.chip.pulse_count)
    driver.apply_pulses([0], "SET", 100.0, 500)
    assert len(calls) == 1  # the chip is called once the request is within limits


def test_virtual_clock_jumps(driver: MockDriver) -> None:
    t = driver.clock.now()
    driver.clock.sleep_until(t + 3.15e7)
    assert driver.clock.now() == pytest.approx(t + 3.15e7)
    driver.clock.sleep_until(t)  # the past: returns at once, never goes back
    assert driver.clock.now() == pytest.approx(t + 3.15e7)


def test_context_manager_closes(driver: MockDriver) -> None:
    with driver as d:
        assert d.apply_pulses([0], "SET", 100.0, 500) == 1
    with pytest.raises(TransportError, match="closed"):
        driver.read()


def test_wall_clock_sleeps_until() -> None:
    clock = WallClock()
    t = clock.now()
    assert clock.sleep_until(t + 0.02) >= t + 0.02
