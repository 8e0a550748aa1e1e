"""VisaDriver and SerialDriver against mock servers started by the tests."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import MockDriver, open_driver
from drivers.serial import SerialDriver
from drivers.visa import VisaDriver
from mock_chip import FaultRates, MockChipConfig
from mock_chip.scpi_server import ScpiServer
from mock_chip.serial_server import SerialServer
from pcmlab import framing
from pcmlab.errors import DeviceError, LimitError, TransportError
from pcmlab.store import RunReader
from protocols import program_and_verify
from protocols.experiment import RunConfig, measure_run
from tests.drivers.conftest import faulty, make_controller

TARGETS = np.random.default_rng(0).uniform(0, 25, 64 * 128).astype(np.float32)


def in_process_convergence() -> float:
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 64, "cols": 128}, seed=1,
                                              faults=FaultRates.none()))
    return program_and_verify(driver, np.arange(TARGETS.size), TARGETS
                              ).converged_fraction_nonzero


@pytest.mark.parametrize("transport", ["visa", "serial"])
def test_program_and_readouts_end_to_end(transport, scpi_server, serial_server,
                                         tmp_path: Path) -> None:
    server = scpi_server if transport == "visa" else serial_server
    resource = scpi_server.resource if transport == "visa" else serial_server.path
    with open_driver(resource, timeout_s=5.0) as driver:
        assert driver.info.virtual_clock and driver.info.n_cells == 64 * 128
        result = program_and_verify(driver, np.arange(TARGETS.size), TARGETS)
        assert result.converged_fraction_nonzero == pytest.approx(in_process_convergence(),
                                                                  abs=0.005)
        np.testing.assert_array_equal(driver.pulses_acknowledged,
                                      server.controller.chip.pulse_count)
        with pytest.raises(LimitError, match="above the chip's limit"):
            driver.apply_pulses([0], "SET", 400.0, 500)
        # a short readout run through the same transport, into a file
        config = RunConfig(resource=resource, targets={"kind": "levels", "cells": 2000},
                           schedule={"t0_s": 20, "t_end_s": 86400, "n_readouts": 5})
        result, taken = measure_run(driver, config, tmp_path / "run.h5")
    assert taken == 5
    with RunReader(tmp_path / "run.h5") as run:
        ro = run.readouts()
        assert ro.time_s[-1] >= 86400 and ro.conductance_us.shape == (5, 2000)
        assert run.driver_identity.startswith("pcmlab,MockPCM-64x128")


def served(transport: str, controller, faults):
    """A mock server on ``transport`` and a function that opens a retrying driver to it."""
    if transport == "visa":
        server = ScpiServer(controller, "127.0.0.1", 0, faults=faults)
        return server, lambda: VisaDriver(server.resource, timeout_s=0.3, retries=8)
    server = SerialServer(controller, faults=faults)
    return server, lambda: SerialDriver(server.path, timeout_s=0.2, retries=8,
                                        bytes_per_s=5e6)


@pytest.mark.parametrize("transport", ["visa", "serial"])
def test_exactly_once_with_two_percent_faults(transport) -> None:
    controller = make_controller(seed=3)
    faults = faulty(0.02, seed=11)
    server, make = served(transport, controller, faults)
    with server, make() as driver:
        result = program_and_verify(driver, np.arange(TARGETS.size), TARGETS)
        chip = controller.chip
        assert result.converged_fraction_nonzero > 0.99
        # every cell got exactly the pulses the driver saw acknowledged
        np.testing.assert_array_equal(driver.pulses_acknowledged, chip.pulse_count)
        assert chip.pulse_count.sum() > 3 * TARGETS.size
    hit = server.faults.counts
    assert hit["drop_reply"] + hit["corrupt_reply"] >= 1, hit


@pytest.mark.parametrize("transport", ["visa", "serial"])
@pytest.mark.parametrize("replay", [True, False])
def test_faults_on_pulses_are_survived_exactly_once_only_with_the_replay_memory(
        transport, replay) -> None:
    """Faults that hit pulse batches (lost and garbled replies after the pulses ran): with
    the chip's replay memory every cell gets exactly the acknowledged pulses; without it
    (the contract broken on purpose) the retries pulse cells again, and this test sees it."""
    from mock_chip.controller import Controller
    from mock_chip.faults import TransportFaults

    base = make_controller(seed=3)
    controller = Controller(base.chip, violations=frozenset() if replay else {"replay"})
    faults = TransportFaults(drop_reply=0.15, corrupt_reply=0.15, only="pulses", seed=5)
    server, make = served(transport, controller, faults)
    cells = np.arange(2000, dtype=np.uint32)
    with server, make() as driver:
        for _ in range(20):
            driver.apply_pulses(cells, "SET", 0.0, 500.0)  # amplitude 0: counted, no effect
        counts = controller.chip.pulse_count[cells]
        acked = driver.pulses_acknowledged[cells]
    hit = server.faults.counts
    assert hit["drop_reply"] + hit["corrupt_reply"] >= 3, hit  # the faults hit pulses
    assert (acked == 20).all()
    if replay:
        np.testing.assert_array_equal(counts, acked)
    else:
        assert (counts > acked).any()  # re-sent batches were applied again


def test_device_errors_carry_the_command(serial_server, scpi_server) -> None:
    with SerialDriver(serial_server.path, timeout_s=2) as driver:
        with pytest.raises(DeviceError, match=r"READ failed: -222") as info:
            driver._transact(framing.Opcode.READ, np.array([10**6], "<u4").tobytes())
        assert info.value.command == "READ" and info.value.code == -222
    with VisaDriver(scpi_server.resource, timeout_s=2) as driver:
        with pytest.raises(DeviceError, match="READ") as info:
            driver._read_block("READ? ", np.array([10**6], np.uint32))
        assert info.value.code == -222


def test_wall_clock_chip_is_detected() -> None:
    with ScpiServer(make_controller(virtual_clock=False), "127.0.0.1", 0) as server, \
            VisaDriver(server.resource, timeout_s=2) as driver:
        assert not driver.info.virtual_clock
        t0 = driver.clock.now()
        t1 = driver.clock.sleep_until(t0 + 0.3)  # waits in real time
        assert t1 >= t0 + 0.3


def test_dead_and_silent_servers_fail_within_the_timeout() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    with pytest.raises(TransportError, match=f"127.0.0.1::{port}"):
        VisaDriver(f"TCPIP0::127.0.0.1::{port}::SOCKET", timeout_s=0.5, retries=1)
    assert time.monotonic() - t < 5
    # a server that accepts and never answers
    silent = socket.create_server(("127.0.0.1", 0))
    conns = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(silent.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    resource = f"TCPIP0::127.0.0.1::{silent.getsockname()[1]}::SOCKET"
    t = time.monotonic()
    try:
        with pytest.raises(TransportError, match=resource.replace(":", ".")):
            VisaDriver(resource, timeout_s=0.3, retries=1)
        assert time.monotonic() - t < 0.3 * 2 + 3
    finally:
        stop.set()
        thread.join()
        silent.close()
        for c in conns:
            c.close()


def test_silent_serial_port_fails_within_the_timeout(tmp_path: Path) -> None:
    import os
    import pty

    master, slave = pty.openpty()  # nobody answers on the other side
    try:
        t = time.monotonic()
        with pytest.raises(TransportError, match=os.ttyname(slave)):
            SerialDriver(os.ttyname(slave), timeout_s=0.2, retries=2)
        assert time.monotonic() - t < 3
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(TransportError, match="cannot open serial port"):
        SerialDriver(str(tmp_path / "no-such-port"))


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF),
                                 st.binary(max_size=300)), min_size=1, max_size=6),
       noise=st.binary(max_size=40), corrupt=st.integers(0, 5))
def test_frames_survive_garbage_and_resync_after_corruption(frames, noise, corrupt) -> None:
    encoded = [framing.encode(s, op, p) for s, op, p in frames]
    stream = bytearray(noise)
    for i, e in enumerate(encoded):
        if i == corrupt:
            e = bytearray(e)
            e[len(e) // 2] ^= 0x5A  # one damaged frame: dropped, the rest found
        stream += e
    decoder = framing.Decoder()
    got = []
    for i in range(0, len(stream), 7):  # arrives in pieces
        decoder.feed(bytes(stream[i:i + 7]))
        got += decoder.frames()
    while decoder.pending:  # a false start that claims more bytes than ever come: the
        decoder.skip_start()  # receiver's inter-byte timeout gives up on it, hunts on
        got += decoder.frames()
    expected = [framing.Frame(s & 0xFFFF, op, p) for k, (s, op, p) in enumerate(frames)
                if k != corrupt]
    # a valid frame may in principle hide inside noise; everything sent intact is found
    found = [f for f in got if f in expected]
    assert found == expected


def test_mock_server_command_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pcmlab.cli", "mock-server", "--tcp",
                             "127.0.0.1:0", "--rows", "32", "--cols", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        resource = line.split("serving on ")[1].strip()
        config = tmp_path / "run.toml"
        config.write_text(f'resource = "{resource}"\n[targets]\ncells = 500\n'
                          "[schedule]\nt0_s = 20\nt_end_s = 1e6\nn_readouts = 4\n")
        run = subprocess.run([sys.executable, "-m", "pcmlab.cli", "run", str(config), "-o",
                              str(tmp_path / "r.h5")], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        assert "readouts: 4 of 4" in run.stdout
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_serial_replay_memory_is_exactly_once_and_not_fooled_by_a_new_session(
        serial_server) -> None:
    import serial as pyserial

    chip = serial_server.controller.chip
    port = pyserial.Serial(serial_server.path, timeout=1)
    decoder = framing.Decoder()

    def exchange(frame: bytes) -> framing.Frame:
        port.write(frame)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            decoder.feed(port.read(max(1, port.in_waiting)))
            got = decoder.frames()
            if got:
                return got[0]
        raise AssertionError("no reply")

    def session(session_id: int) -> None:
        reply = exchange(framing.encode(1, framing.Opcode.SESSION,
                                        framing.SESSION_REQUEST.pack(session_id)))
        assert framing.SESSION_REPLY.unpack(reply.payload) == (framing.PROTOCOL_VERSION,
                                                               session_id)

    rec = np.array([(5, 150.0)], dtype=[("cell", "<u4"), ("amp", "<f4")])
    pulse = framing.encode(77, framing.Opcode.PULSE,
                           framing.PULSE_HEAD.pack(0, 500.0) + rec.tobytes())
    session(0xA11CE)
    assert exchange(pulse).payload == (1).to_bytes(4, "little")
    assert exchange(pulse).payload == (1).to_bytes(4, "little")  # a retry: not run again
    assert chip.pulse_count[5] == 1
    # the same seq with another command runs
    other = framing.encode(77, framing.Opcode.PULSE,
                           framing.PULSE_HEAD.pack(0, 500.0) + rec.tobytes()[:4]
                           + np.float32(120.0).tobytes())
    assert exchange(other).opcode == framing.Opcode.PULSE | framing.ACK_BIT
    assert chip.pulse_count[5] == 2
    # a new session that lands on the earlier session's seq with the very same frame is
    # a new command, not a retry: it runs
    session(0xB0B)
    assert exchange(pulse).payload == (1).to_bytes(4, "little")
    assert chip.pulse_count[5] == 3
    port.close()


def test_serial_sessions_never_see_each_others_replies(serial_server) -> None:
    """A driver opens its own session: forced onto the sequence numbers of the session
    before it, it still gets fresh answers and its pulses run."""
    chip = serial_server.controller.chip
    with SerialDriver(serial_server.path, timeout_s=0.5) as first:
        start = first._seq
        first.apply_pulses([9], "SET", 150.0, 500.0)
    with SerialDriver(serial_server.path, timeout_s=0.5) as second:
        assert second.session_id != first.session_id
        second._seq = start  # the next frame is the first session's pulse, byte for byte
        second.apply_pulses([9], "SET", 150.0, 500.0)
    assert chip.pulse_count[9] == 2


def test_line_noise_of_any_amount_costs_no_waiting() -> None:
    """A 0xA5 in noise claims a payload that never comes; its header CRC rejects it at
    once, so a frame right behind 16 MiB of noise comes out of the same ``frames()``."""
    noise = np.random.default_rng(5).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    frame = framing.encode(42, framing.Opcode.TIME)
    decoder = framing.Decoder()
    for i in range(0, len(noise), 1 << 20):
        decoder.feed(noise[i:i + (1 << 20)])
        assert decoder.frames() == []
    decoder.feed(frame)
    assert decoder.frames() == [framing.Frame(42, framing.Opcode.TIME, b"")]


def test_serial_link_answers_at_once_after_line_noise(serial_server) -> None:
    """4 MiB of noise on the line to the device, then a read: answered on the first try
    within the driver's 2 s timeout (it used to stall 0.2 s per false frame start)."""
    with SerialDriver(serial_server.path, timeout_s=2.0, retries=0) as driver:
        noise = np.random.default_rng(6).integers(0, 256, 4 << 20, dtype=np.uint8)
        driver._ser.write(noise.tobytes())
        driver._ser.flush()
        assert driver.read(np.arange(4)).shape == (4,)
        assert driver.retransmissions == 0
        assert driver.read(None).size == driver.info.n_cells


def test_serial_short_replies_and_wrong_counts_raise(serial_server) -> None:
    """A reply with fewer values than cells, or an applied count that is not the batch's,
    is a TransportError, never a short array or a silent success."""
    from pcmlab.errors import TransportError

    c = serial_server.controller
    real_read, real_pulse = c.read, c.pulse
    with SerialDriver(serial_server.path, timeout_s=0.5) as d:
        c.read = lambda cells: real_read(cells)[:-1]
        with pytest.raises(TransportError, match="READ of 10 cells answered 36 bytes"):
            d.read(np.arange(10))
        with pytest.raises(TransportError, match="READ_ARRAY"):
            d.read(None)
        c.read = real_read
        c.pulse = lambda *a: real_pulse(*a) - 1
        with pytest.raises(TransportError, match="acknowledged 4 pulses"):
            d.apply_pulses(np.arange(5), "SET", 100.0, 500.0)
        c.pulse = real_pulse
        assert d.read(np.arange(10)).size == 10


def test_every_open_on_a_garbling_link_is_clean_or_a_transport_error() -> None:
    """With 30 % of replies garbled, an open either gets the chip's true identity or
    raises TransportError, and a failed open never keeps the one connection the mock
    serves: the next client is answered within a second."""
    from drivers.visa import VisaDriver
    from mock_chip.faults import TransportFaults
    from mock_chip.scpi_server import ScpiServer
    from pcmlab.errors import TransportError
    from tests.drivers.conftest import make_controller

    controller = make_controller()
    faults = TransportFaults(corrupt_reply=0.3, seed=11)
    opened = failed = 0
    with ScpiServer(controller, "127.0.0.1", 0, faults=faults) as srv:
        for _ in range(20):
            try:
                with VisaDriver(srv.resource, timeout_s=1.0, retries=1) as d:
                    assert d.info.identity == controller.identity()
                    opened += 1
            except TransportError:
                failed += 1
                t = time.monotonic()
                with socket.create_connection(srv.address, timeout=2.0) as s:
                    s.sendall(b"*IDN?\n")
                    assert s.recv(256)  # served (the reply may be garbled: it is a test)
                assert time.monotonic() - t < 1.0
    assert opened + failed == 20 and opened > 0
