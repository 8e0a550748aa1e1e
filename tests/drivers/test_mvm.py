"""In-array matrix-vector multiplication: over SCPI and serial against the mock servers,
checked against G @ x within the periphery's stated error; limits, malformed requests and
chips without the capability give the documented errors with the chip state intact."""

import struct

import numpy as np
import pytest

from drivers import MockDriver
from drivers.serial import SerialDriver
from drivers.visa import VisaDriver
from mock_chip import FaultRates, MockChip
from mock_chip.clock import RealtimeClock
from mock_chip.controller import Controller
from mock_chip.scpi_server import ScpiServer
from mock_chip.serial_server import SerialServer
from pcmlab import framing
from pcmlab.errors import CapabilityError, ConfigError, DeviceError, LimitError
from pcmlab.mvm import MVM_HEAD, MvmRegion, MvmRequest, encode_request
from pcmlab.pcm_model import PCMModel

ROWS, COLS = 32, 64
IDEAL = {"adc_gain_std": 0.0, "adc_offset_std_lsb": 0.0, "adc_noise_lsb": 0.0}


def programmed_chip(mvm: dict | None = None, seed: int = 2) -> MockChip:
    chip = MockChip(geometry={"rows": ROWS, "cols": COLS}, seed=seed,
                    faults=FaultRates.none(), clock=RealtimeClock(), mvm=mvm or {})
    amps = np.random.default_rng(seed).uniform(60, 200, ROWS * COLS)
    chip.apply_pulses(np.arange(ROWS * COLS), "SET", amps, 500.0)
    return chip


def open_driver_to(transport: str, server):
    if transport == "visa":
        return VisaDriver(server.resource, timeout_s=5.0)
    return SerialDriver(server.path, timeout_s=5.0, bytes_per_s=5e6)


def serve(transport: str, controller: Controller):
    if transport == "visa":
        return ScpiServer(controller, "127.0.0.1", 0)
    return SerialServer(controller)


@pytest.mark.parametrize("transport", ["visa", "serial"])
def test_mvm_is_g_times_x_within_the_stated_error(transport: str) -> None:
    chip = programmed_chip(IDEAL)
    model = PCMModel()
    with serve(transport, Controller(chip)) as server, open_driver_to(transport, server) as d:
        assert d.info.capabilities == ("mvm",)
        spec = d.info.mvm
        assert (spec.dac_bits, spec.adc_bits) == (8, 8)
        rng = np.random.default_rng(0)
        x = rng.integers(-spec.dac_max, spec.dac_max + 1, (2000, 16))
        region = MvmRegion(8, 10, 16, 20)
        fs = 4.0
        codes = d.mvm(region, x, full_scale=fs)
        single = d.mvm(region, x[:5], full_scale=fs, differential=False)
        # the truth: drifted conductances now, without read noise
        g = chip.true_conductance_us().reshape(ROWS, COLS)[8:24, 10:30].astype(np.float64)
        age = chip.clock.now() - chip.devices.t_prog_s.reshape(ROWS, COLS)[8:24, 10:30]
    xn = x / spec.dac_max
    s = xn @ (g / 25.0)
    expected = (s[:, 0::2] - s[:, 1::2]) / fs * spec.adc_max
    assert codes.shape == (2000, 10) and codes.dtype == np.int16
    # stated error: rounding (0.5 LSB) and read noise: per device sigma_read(G, age)
    sigma = model.read_noise_sigma_us(g, g, float(np.median(age))) / 25.0
    var = (xn**2) @ (sigma**2)
    sd = np.sqrt(var[:, 0::2] + var[:, 1::2]) / fs * spec.adc_max
    err = codes - expected
    assert (np.abs(err) <= 0.5 + 5 * sd + 1e-6).all()
    assert np.abs(err).mean() < 0.5 + sd.mean()  # and no bias hiding inside the bound
    assert abs(err.mean()) < 0.1
    assert single.shape == (5, 20)  # single-ended: one code per column
    expected_single = np.clip(s[:5] / fs * spec.adc_max, -127, 127)
    sd_single = np.sqrt(var[:5]) / fs * spec.adc_max
    assert (np.abs(single - expected_single) <= 0.5 + 5 * sd_single + 1e-6).all()


@pytest.mark.parametrize("transport", ["visa", "serial"])
def test_mvm_limits_and_malformed_requests_leave_the_chip_intact(transport: str) -> None:
    chip = programmed_chip()
    controller = Controller(chip)
    before = chip.devices.g_prog_us.copy(), chip.devices.t_prog_s.copy()
    pulses = chip.pulse_count.copy()
    with serve(transport, controller) as server, open_driver_to(transport, server) as d:
        x = np.ones((3, 4), dtype=np.int16)
        # refused by the driver before anything is sent
        with pytest.raises(LimitError, match="outside the 32 x 64 array"):
            d.mvm((30, 0, 4, 8), x, full_scale=1.0)
        with pytest.raises(LimitError, match=r"beyond \+-127"):
            d.mvm((0, 0, 4, 8), x * 300, full_scale=1.0)
        with pytest.raises(ConfigError, match="column pairs: 7 columns"):
            d.mvm((0, 0, 4, 7), x, full_scale=1.0)
        with pytest.raises(ConfigError, match="full_scale = 0"):
            d.mvm((0, 0, 4, 8), x, full_scale=0.0)
        # refused by the chip: a request sent past the driver's checks
        bad = MvmRequest(MvmRegion(30, 0, 4, 8), True, 1.0, x)
        with pytest.raises(DeviceError, match="-222") as exc:
            d._mvm(bad)
        assert exc.value.code == -222
        malformed = encode_request(MvmRequest(MvmRegion(0, 0, 4, 8), True, 1.0, x))[:-2]
        if transport == "visa":
            from pyvisa.util import to_ieee_block

            d._inst.write_raw(b"MVM? " + to_ieee_block(malformed, "B") + b"\n")
            assert d._inst.read_raw() == b"\n"
            assert d._inst.query("SYST:ERR?").startswith("-161,")
        else:
            with pytest.raises(DeviceError, match="-161"):
                d._transact(framing.Opcode.MVM, malformed)
        # and the chip serves on, its cells as they were
        assert d.mvm((0, 0, 4, 8), x, full_scale=1.0).shape == (3, 4)
    np.testing.assert_array_equal(chip.pulse_count, pulses)  # the programmed state as it was
    np.testing.assert_array_equal(chip.devices.g_prog_us, before[0])
    np.testing.assert_array_equal(chip.devices.t_prog_s, before[1])


def test_serial_mvm_is_a_query_never_answered_from_the_replay_memory() -> None:
    chip = programmed_chip(IDEAL)
    with SerialServer(Controller(chip)) as server, SerialDriver(server.path) as d:
        request = MvmRequest(MvmRegion(0, 0, 8, 2), True, 8.0,
                             np.full((1, 8), 127, dtype=np.int16))
        d.apply_pulses(np.arange(8) * COLS + 1, "RESET", 480.0, 50.0)  # G-: off
        d._seq = 500
        first = struct.unpack("<h", d._transact(framing.Opcode.MVM,
                                                encode_request(request)))[0]
        d.apply_pulses(np.arange(8) * COLS, "RESET", 480.0, 50.0)  # G+ off too
        d._seq = 500  # the very same frame again: executed, not replayed
        second = struct.unpack("<h", d._transact(framing.Opcode.MVM,
                                                 encode_request(request)))[0]
    assert first > 20 and abs(second) < first / 4, (first, second)


@pytest.mark.parametrize("transport", ["visa", "serial", "mock"])
def test_a_chip_without_mvm_says_so(transport: str) -> None:
    chip = programmed_chip({"enabled": False})
    if transport == "mock":
        d = MockDriver(chip)
    else:
        server = serve(transport, Controller(chip)).__enter__()
        d = open_driver_to(transport, server)
    try:
        assert d.info.capabilities == () and d.info.mvm is None
        with pytest.raises(CapabilityError, match="has no MVM capability"):
            d.mvm((0, 0, 2, 2), np.zeros((1, 2), dtype=np.int16), full_scale=1.0)
    finally:
        d.close()
        if transport != "mock":
            server.__exit__(None, None, None)


def test_mvm_batches_travel_as_one_block_each() -> None:
    """Thousands of vectors in one request; more than the chip's max_vectors are split."""
    chip = programmed_chip({"max_vectors": 1000})
    controller = Controller(chip)
    calls = []
    real = controller.mvm
    controller.mvm = lambda request: calls.append(request.inputs.shape[0]) or real(request)
    with ScpiServer(controller, "127.0.0.1", 0) as server, VisaDriver(server.resource) as d:
        x = np.zeros((2500, 16), dtype=np.int16)
        assert d.mvm((0, 0, 16, 16), x, full_scale=1.0).shape == (2500, 8)
    assert calls == [1000, 1000, 500]
    assert MVM_HEAD.size == 28


def test_mvm_batches_are_bounded_by_the_reply_block_too() -> None:
    """A wide region (outputs > rows) on a chip with a large max_vectors: the reply, n x
    outputs x 2 bytes, must stay within the 64 MiB block limit as the request does."""
    from drivers.base import MAX_BLOCK_BYTES, ChipInfo, DriverBase
    from pcmlab.config import ArrayGeometry, ChipLimits
    from pcmlab.mvm import MvmSpec

    class Recording(DriverBase):
        def __init__(self) -> None:
            self._info = ChipInfo(identity="x,wide,0,0", geometry=ArrayGeometry(rows=2,
                                  cols=2048), limits=ChipLimits(),
                                  mvm=MvmSpec(dac_bits=8, adc_bits=8, max_vectors=1 << 20))
            self.replies: list[int] = []

        def _mvm(self, request: MvmRequest) -> np.ndarray:
            out = np.zeros((request.inputs.shape[0], request.outputs), dtype=np.int16)
            self.replies.append(out.nbytes)
            return out

    d = Recording()
    x = np.ones((17_000, 1), dtype=np.int16)  # 17 000 x 2048 x 2 bytes: 70 MB of reply
    assert d.mvm((0, 0, 1, 2048), x, full_scale=1.0, differential=False).shape == (17_000,
                                                                                   2048)
    print("reply bytes per request", d.replies, "limit", MAX_BLOCK_BYTES)
    assert len(d.replies) == 2 and max(d.replies) <= MAX_BLOCK_BYTES
