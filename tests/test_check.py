"""pcmlab check from the command line against the mock servers (SCPI, serial), with each
wire rule broken on purpose; the pytest plugin; the example driver plugin through the CLI."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mock_chip import FaultRates, MockChip
from mock_chip.clock import RealtimeClock
from mock_chip.controller import Controller
from mock_chip.scpi_server import ScpiServer
from mock_chip.serial_server import SerialServer

ROOT = Path(__file__).resolve().parent.parent


def controller(*violations: str) -> Controller:
    chip = MockChip(geometry={"rows": 64, "cols": 128}, seed=1, faults=FaultRates.none(),
                    clock=RealtimeClock())
    return Controller(chip, violations=frozenset(violations))


def pcmlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)


def check(resource: str, *extra: str) -> subprocess.CompletedProcess:
    return pcmlab("check", "--resource", resource, "--yes", "--cells", "0:512", *extra)


@pytest.mark.parametrize("violation", [None, "replay", "error-order", "limits",
                                       "all-or-nothing", "silent-malformed", "stale-reads"])
def test_check_over_scpi(violation, tmp_path: Path) -> None:
    broken = {"replay": "wire-exactly-once", "error-order": "wire-error-queue",
              "limits": "wire-limits", "all-or-nothing": "wire-limits",
              "silent-malformed": "wire-malformed", "stale-reads": "wire-reads-fresh"}
    with ScpiServer(controller(*([violation] if violation else [])), "127.0.0.1", 0) as srv:
        proc = check(srv.resource, "--json", str(tmp_path / "c.json"))
    report = json.loads((tmp_path / "c.json").read_text())
    if violation is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert report["failed"] == [] and "keeps the contract" in proc.stdout
        rules = {r["rule"] for r in report["results"] if r["status"] == "pass"}
        assert {"wire-error-queue", "wire-limits", "wire-exactly-once", "wire-reads-fresh",
                "wire-malformed", "limits", "duplicates"} <= rules
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert broken[violation] in report["failed"]
        assert f"contract broken: {broken[violation]}" in " ".join(proc.stderr.split()) \
            or broken[violation] in proc.stderr


@pytest.mark.parametrize(("violation", "rule"), [(None, None), ("replay", "wire-exactly-once"),
                                                 ("stale-reads", "wire-reads-fresh"),
                                                 ("shared-sessions", "wire-sessions"),
                                                 ("mvm-sign", "mvm-agreement"),
                                                 ("limits", "wire-limits")])
def test_check_over_serial(violation, rule) -> None:
    with SerialServer(controller(*([violation] if violation else []))) as srv:
        proc = check(srv.path)
    if violation is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 1 and rule in proc.stderr, proc.stdout + proc.stderr


def test_check_asks_before_it_overwrites_cells() -> None:
    proc = pcmlab("check", "--cells", "0:512")
    assert proc.returncode == 2 and "confirm with --yes" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = pcmlab("check", "--cells", "0:99999", "--yes")
    assert proc.returncode == 2 and "--cells 0:99999" in proc.stderr


def test_the_pytest_plugin_runs_the_checks_on_a_chip(tmp_path: Path) -> None:
    def run(resource: str | None) -> subprocess.CompletedProcess:
        args = ["--pcmlab-resource", resource, "--pcmlab-cells", "0:512"] if resource else []
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-rfs", *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)

    proc = run(None)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout
    with ScpiServer(controller(), "127.0.0.1", 0) as srv:
        proc = run(srv.resource)
    assert proc.returncode == 0 and "15 passed" in proc.stdout, proc.stdout
    with ScpiServer(controller("replay"), "127.0.0.1", 0) as srv:
        proc = run(srv.resource)
    assert proc.returncode == 1 and "pcmlab-check[wire-exactly-once]" in proc.stdout
    assert "1 failed, 14 passed" in proc.stdout


@pytest.fixture(scope="module")
def example_plugin() -> str:
    """The example plugin package, installed into this environment (once)."""
    if importlib.util.find_spec("pcmlab_example_plugin") is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "-e", str(ROOT / "examples" / "pcmlab-example-plugin")],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    return "examplechip://?seed=1"


def test_the_example_plugin_is_found_and_drives_the_commands(example_plugin: str,
                                                              tmp_path: Path) -> None:
    proc = pcmlab("drivers")
    assert proc.returncode == 0 and "examplechip" in proc.stdout
    assert "pcmlab-example-plugin 0.1.0" in proc.stdout  # and from which package
    proc = pcmlab("program", "--resource", example_plugin, "--cells", "2000")
    assert proc.returncode == 0, proc.stderr
    assert "ExampleLabs" in proc.stdout
    proc = check(example_plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = tmp_path / "run.toml"
    config.write_text(f'resource = "{example_plugin}"\n[targets]\nkind = "uniform"\n'
                      'cells = 1000\n[schedule]\nn_readouts = 3\n')
    proc = pcmlab("run", str(config), "-o", str(tmp_path / "run.h5"))
    assert proc.returncode == 0, proc.stderr
    proc = pcmlab("inspect", str(tmp_path / "run.h5"))
    assert proc.returncode == 0 and "ExampleLabs" in proc.stdout
    proc = pcmlab("program", "--resource", "nochip://x", "--cells", "10")
    assert proc.returncode == 2 and "no driver handles 'nochip://'" in proc.stderr


RAISING_CONFTEST = '''
import numpy as np

from drivers import MockDriver
from drivers.plugins import DriverPlugin, register
from mock_chip import FaultRates, MockChipConfig
from pcmlab.errors import DeviceError


class Info:
    """The mock's info, but asking the identity raises (the identity rule's call)."""

    def __init__(self, info):
        self._info = info

    def __getattr__(self, name):
        if name == "identity":
            raise DeviceError("identity query failed")
        return getattr(self._info, name)


class Clock:
    def now(self):
        raise RuntimeError("the clock broke")  # not a pcmlab error: still that rule's fail

    def sleep_until(self, t_s):
        raise RuntimeError("the clock broke")


class Raising(MockDriver):
    """Every call a rule makes raises."""

    @property
    def info(self):
        return Info(self._info)

    @property
    def clock(self):
        return Clock()

    def apply_pulses(self, cells, kind, amplitude_ua, width_ns):
        raise DeviceError("pulse failed")

    def read(self, cells=None):
        raise DeviceError("read failed")

    def mvm(self, region, inputs, **kw):
        raise DeviceError("mvm failed")


register(DriverPlugin("raising", lambda resource, **o: Raising(config=MockChipConfig(
    geometry={"rows": 64, "cols": 128}, seed=1, faults=FaultRates.none())),
    schemes=("raising",)))
'''


def test_the_pytest_plugin_fails_every_rule_of_a_driver_that_raises(tmp_path: Path) -> None:
    """A rule whose check raises fails its pytest item (it was a skip: a green CI on a
    broken driver), by the rule's one name."""
    from protocols.conformance_rules import DRIVER_RULES

    (tmp_path / "conftest.py").write_text(RAISING_CONFTEST)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rfs", "--pcmlab-resource", "raising://x", "--pcmlab-cells",
                           "0:512"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    out = proc.stdout
    print(out[-3000:])
    assert proc.returncode == 1, out
    for rule in DRIVER_RULES:
        assert f"FAILED ::pcmlab-check[{rule}]" in out, (rule, out[-3000:])
    assert f"{len(DRIVER_RULES)} failed" in out and "skipped" not in out
