"""pcmlab check through the driver API: passes on a good driver, and each rule fails, by
name, on a driver that breaks it."""

import numpy as np
import pytest

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.errors import ConfigError
from pcmlab.pulses import PulseKind
from protocols.conformance import ConformanceSuite, check_chip, parse_cells, results_json

CELLS = np.arange(1024, 2048, dtype=np.uint32)


def config(seed: int = 1) -> MockChipConfig:
    return MockChipConfig(geometry={"rows": 64, "cols": 128}, seed=seed,
                          faults=FaultRates.none())


def statuses(driver) -> dict[str, str]:
    return {r.rule: r.status for r in ConformanceSuite(driver, CELLS).run()}


def test_a_good_driver_passes_and_the_rest_of_the_array_is_untouched() -> None:
    d = MockDriver(config=config())
    results = check_chip(d, CELLS)
    got = {r.rule: r.status for r in results}
    assert all(s in ("pass", "info", "skip") for s in got.values()), got
    assert {"identity", "limits", "all-or-nothing", "duplicates", "set-reset",
            "read-agreement", "clock"} <= {k for k, v in got.items() if v == "pass"}
    assert got["physics"] == "info" and got["timing"] == "info"
    outside = np.ones(d.chip.n_cells, bool)
    outside[CELLS] = False
    assert d.chip.pulse_count[outside].sum() == 0 and d.chip.pulse_count[CELLS].sum() > 0
    assert '"failed": []' in results_json(results)


class ThreeFieldIdentity(MockDriver):
    def __init__(self) -> None:
        super().__init__(config=config())
        self._info = self._info.model_copy(update={"identity": "pcmlab,MockPCM,0"})


class Clipping(MockDriver):
    """Clips amplitudes to the limit instead of refusing (PyMeasure's truncated_range)."""

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        lim = self.info.limits
        top = lim.max_set_ua if PulseKind.parse(kind) is PulseKind.SET else lim.max_reset_ua
        amps = np.nan_to_num(np.clip(np.asarray(amplitude_ua, float), 0, top))
        width = float(np.clip(width_ns, lim.min_width_ns, lim.max_width_ns))
        cells = np.asarray(cells)
        cells = cells[cells < self.info.n_cells]
        return super().apply_pulses(cells, kind, np.broadcast_to(amps, np.shape(cells))
                                    if np.ndim(amps) == 0 else amps[:cells.size], width)


class Partial(MockDriver):
    """Applies the good records of a batch, then raises for the bad one."""

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        amps = np.broadcast_to(np.asarray(amplitude_ua, float), np.shape(cells))
        lim = self.info.limits.max_set_ua
        good = amps <= lim
        if not good.all() and good.any():
            super().apply_pulses(np.asarray(cells)[good], kind, amps[good], width_ns)
        return super().apply_pulses(cells, kind, amplitude_ua, width_ns)


class Dedup(MockDriver):
    """Merges a cell listed twice into one pulse."""

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        cells = np.asarray(cells)
        amps = np.broadcast_to(np.asarray(amplitude_ua, float), cells.shape)
        _, first = np.unique(cells, return_index=True)
        super().apply_pulses(cells[first], kind, amps[first], width_ns)
        return cells.size


class Swapped(MockDriver):
    """Sends SET as RESET and RESET as SET."""

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        k = PulseKind.parse(kind)
        other = PulseKind.RESET if k is PulseKind.SET else PulseKind.SET
        lim = self.info.limits
        amps = np.minimum(np.asarray(amplitude_ua, float),
                          lim.max_set_ua if other is PulseKind.SET else lim.max_reset_ua)
        return super().apply_pulses(cells, other, amps, width_ns)


class StaleFullRead(MockDriver):
    """The full-array read returns the array as it was when the driver connected."""

    def __init__(self) -> None:
        super().__init__(config=config())
        self._first = self.chip.read()

    def read(self, cells=None):
        return self._first.copy() if cells is None else super().read(cells)


class BackwardsClock(MockDriver):
    def __init__(self) -> None:
        super().__init__(config=config())
        inner, ticks = self.chip.clock, [0]

        class Clock:
            def now(self) -> float:
                ticks[0] += 1
                return inner.now() - (5.0 if ticks[0] % 7 == 0 else 0.0)

            def sleep_until(self, t_s: float) -> float:
                return inner.sleep_until(t_s)

        self._clock = Clock()


@pytest.mark.parametrize(("driver", "rule"), [
    (ThreeFieldIdentity, "identity"),
    (lambda: Clipping(config=config()), "limits"),
    (lambda: Partial(config=config()), "all-or-nothing"),
    (lambda: Dedup(config=config()), "duplicates"),
    (lambda: Swapped(config=config()), "set-reset"),
    (StaleFullRead, "read-agreement"),
    (BackwardsClock, "clock"),
])
def test_each_broken_rule_fails_by_name(driver, rule) -> None:
    got = statuses(driver())
    assert got[rule] == "fail", got
    assert statuses(MockDriver(config=config()))[rule] == "pass"


def test_cells_are_checked() -> None:
    d = MockDriver(config=config())
    with pytest.raises(ConfigError, match="at least 64 cells"):
        ConformanceSuite(d, np.arange(10))
    with pytest.raises(ConfigError, match="outside the chip"):
        ConformanceSuite(d, np.arange(8000, 8300))
    assert parse_cells("0:100", 8192).size == 100
    for bad in ("100", "5:2", "0:9000", "a:b"):
        with pytest.raises(ConfigError, match="--cells"):
            parse_cells(bad, 8192)


def test_the_result_type_has_one_home_and_one_table_of_names() -> None:
    """conformance_wire takes the result type from conformance_rules, not from
    conformance (the two imported each other); a result under a name outside the table is
    refused."""
    import subprocess
    import sys

    from protocols.conformance_rules import RULES, CheckResult

    code = ("import sys, protocols.conformance_wire; "
            "assert 'protocols.conformance' not in sys.modules, 'import circle'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ValueError, match="unknown rule name 'limits_refused'"):
        CheckResult("limits_refused", "t", "fail", "f", "m")
    assert set(statuses(MockDriver(config=config()))) <= set(RULES)
