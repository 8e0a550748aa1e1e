"""SCPI dialect files: the driver and the mock server on a dialect that is not pcmlab's,
and dialects refused when loaded, naming the key and the file."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers.visa import VisaDriver
from mock_chip.scpi_server import ScpiServer
from pcmlab.errors import ConfigError, DeviceError, PcmlabError
from pcmlab.scpi import DEFAULT, DEFAULT_PATH, load_dialect
from protocols.program_verify import program_and_verify
from tests.drivers.conftest import make_controller

OTHER = Path(__file__).resolve().parent.parent / "data" / "otherchip.toml"


def test_the_default_dialect_is_pcmlabs_command_set() -> None:
    assert DEFAULT["pulse"].message(seq=7, kind="SET", width_ns=500.0) == "PULS? 7,SET,500,"
    assert DEFAULT["read"].message() == "READ? "
    assert DEFAULT["advance"].message(dt_s=1.5) == "SYST:TIME:ADV 1.5"
    assert DEFAULT["error"].parse_reply('-222,"Data out of range"') == {
        "code": "-222", "message": "Data out of range"}
    assert DEFAULT.record_dtype.itemsize == 8 and DEFAULT.byte_order == "<"
    assert load_dialect(DEFAULT_PATH) == DEFAULT


def test_driver_and_server_on_another_dialect() -> None:
    other = load_dialect(OTHER)
    assert other.byte_order == ">" and other.cell_dtype.itemsize == 8
    with ScpiServer(make_controller(), "127.0.0.1", 0, dialect=other) as srv:
        with VisaDriver(srv.resource, dialect=other) as chip:
            assert chip.info.geometry.rows == 64 and chip.info.virtual_clock
            cells = np.arange(200, dtype=np.uint32)
            target = np.linspace(2, 20, cells.size).astype(np.float32)
            result = program_and_verify(chip, cells, target)
            assert result.converged.mean() > 0.95
            g = chip.read(cells)
            assert np.abs(g - target).mean() < 1.5
            noise = np.median(np.abs(chip.read(cells) - g))  # read-to-read, on a real clock
            # same cells, same order: the full read differs from the cell read by noise only
            assert np.median(np.abs(chip.read(None)[cells] - g)) < 3 * noise + 0.1
            t = chip.clock.now()
            assert chip.clock.sleep_until(t + 100) >= t + 100
            # the chip's own error numbers come through
            with pytest.raises(DeviceError) as err:
                chip._pulse_chunk(99, __import__("pcmlab.pulses").pulses.PulseKind.SET, 500.0,
                                  np.array([(0, 1e6)], dtype=other.record_dtype))
            assert err.value.code == 222
        # a driver that speaks pcmlab's words does not get through, and says so
        with pytest.raises(PcmlabError):
            VisaDriver(srv.resource, timeout_s=1.0, retries=0)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "d.toml"
    p.write_text(text)
    return p


BASE = OTHER.read_text()


@pytest.mark.parametrize(("change", "key"), [
    (lambda t: t.replace('time = { message = "CLOCK?", reply = "T={time_s}" }\n', ""),
     "operations.time: missing"),
    (lambda t: t.replace("XBAR:PULSE? {kind},{width_ns},{seq},{block}",
                         "XBAR:PULSE? {kind},{width_ns},{block}"), "operations.pulse.message"),
    (lambda t: t.replace('reply = "DONE {applied} SEQ {seq}"', 'reply = "DONE {applied}"'),
     "operations.pulse.reply"),
    (lambda t: t.replace('cell = "u8"', 'cell = "u3"'), "block.cell"),
    (lambda t: t.replace('byte_order = "big"', 'byte_order = "middle"'), "block.byte_order"),
    (lambda t: t.replace('RESET = "AMORPH"', 'RESET = "cryst"'), "kinds"),
    (lambda t: t.replace("XBAR:GETALL?", "XBAR:GET?"), "operations: header"),
    (lambda t: t.replace("queue_overflow = 350\n", ""), "errors.queue_overflow"),
    (lambda t: t.replace("XBAR:DIM?", "XBAR:{rows}?"), "operations.size.message"),
    (lambda t: t + "\n[operations.extra]\nmessage = 'X?'\n", "operations"),
])
def test_a_bad_dialect_is_refused_naming_the_key_and_the_file(tmp_path, change, key) -> None:
    path = write(tmp_path, change(BASE))
    with pytest.raises(ConfigError) as err:
        load_dialect(path)
    assert str(path) in str(err.value) and key in str(err.value), str(err.value)


def test_check_and_mock_server_on_another_dialect_from_the_command_line(tmp_path) -> None:
    other = load_dialect(OTHER)
    with ScpiServer(make_controller(), "127.0.0.1", 0, dialect=other) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "pcmlab.cli", "check", "--resource", srv.resource,
             "--dialect", str(OTHER), "--yes", "--cells", "0:512"],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the chip keeps the contract" in proc.stdout
    bad = write(tmp_path, BASE.replace('cell = "u8"', 'cell = "u3"'))
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "mock-server", "--tcp",
                           "127.0.0.1:0", "--dialect", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "block.cell" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_plugin_claims_a_visa_resource_by_its_identity() -> None:
    from drivers import DriverPlugin, open_driver
    from drivers.plugins import resolve, unregister

    opened: list[str] = []

    def open_claimed(resource: str, **options: object) -> VisaDriver:
        opened.append(resource)
        return VisaDriver(resource, timeout_s=2.0, **options)  # e.g. its own settings

    with ScpiServer(make_controller(), "127.0.0.1", 0) as srv:
        assert resolve(srv.resource).name == "visa"
        register_plugin = DriverPlugin("mocklab", open_claimed,
                                       identities=(("pcmlab", "MockPCM"),))
        from drivers import register

        register(register_plugin)
        try:
            assert resolve(srv.resource).name == "mocklab"
            with open_driver(srv.resource) as chip:
                assert chip.info.identity.startswith("pcmlab,MockPCM")
            assert opened == [srv.resource]
            other = DriverPlugin("elsewhere", open_claimed, identities=(("Keysight", ""),))
            register(other)
            assert resolve(srv.resource).name == "mocklab"  # a claim of another maker: no
        finally:
            unregister("mocklab")
            unregister("elsewhere")
        assert resolve(srv.resource).name == "visa"


def _docs_toml_blocks() -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "writing-a-driver.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_a_dialect_without_mvm_is_named_as_the_reason_by_check() -> None:
    """The chip computes MVMs, but its dialect has no MVM operation: 'pcmlab check' says
    the dialect defines none (it said the chip had no MVM capability)."""
    from protocols.conformance import ConformanceSuite

    other = load_dialect(OTHER)
    assert not other.has("mvm_config")
    with (ScpiServer(make_controller(), "127.0.0.1", 0, dialect=other) as srv,
          VisaDriver(srv.resource, dialect=other) as chip):
        assert chip.info.mvm is None
        result = ConformanceSuite(chip, np.arange(1024)).mvm_agreement()
    assert result.status == "skip"
    assert "dialect" in result.figure and "defines no MVM operation" in result.figure, result
    assert "mvm_config" in result.meaning


def test_the_documented_mvm_operations_drive_a_chip_that_computes(tmp_path: Path) -> None:
    """docs/writing-a-driver.md's dialect example with its MVM lines: the driver finds the
    capability and the chip's products come back; one of the two lines alone is refused."""
    blocks = _docs_toml_blocks()
    full = next(b for b in blocks if b.startswith('name = "otherchip"'))
    mvm = next(b for b in blocks if "mvm_config" in b and "mvm =" in b)
    lines = [ln for ln in mvm.splitlines() if ln.startswith("mvm")]
    text = full.replace("[kinds]", "\n".join(lines) + "\n\n[kinds]")
    dialect = load_dialect(write(tmp_path, text))
    with (ScpiServer(make_controller(), "127.0.0.1", 0, dialect=dialect) as srv,
          VisaDriver(srv.resource, dialect=dialect) as chip):
        assert chip.info.mvm is not None
        codes = chip.mvm((0, 0, 4, 8), np.ones((3, 4), dtype=np.int64), full_scale=4.0)
        assert codes.shape == (3, 4)
    for keep in lines:
        alone = full.replace("[kinds]", keep + "\n\n[kinds]")
        with pytest.raises(ConfigError, match="mvm_config and mvm go together"):
            load_dialect(write(tmp_path, alone))
