"""The SCPI grammar of DESIGN.md, driven by a plain-socket client (no pyvisa)."""

import socket

import numpy as np
import pytest

from mock_chip.scpi_server import ScpiServer
from pcmlab.pulses import PulseKind, pulse_records
from tests.drivers.conftest import make_controller

RECORD = np.dtype([("cell", "<u4"), ("amp", "<f4")])


class Client:
    def __init__(self, address) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, _, self.buf = self.buf.partition(b"\n")
        return out

    def query(self, text: str) -> str:
        self.send(text.encode() + b"\n")
        return self.line().decode()

    def block(self) -> np.ndarray:
        while len(self.buf) < 2:
            self.buf += self.sock.recv(1 << 16)
        assert self.buf[:1] == b"#"
        d = int(self.buf[1:2])
        while len(self.buf) < 2 + d:
            self.buf += self.sock.recv(1 << 16)
        n = int(self.buf[2:2 + d])
        end = 2 + d + n + 1
        while len(self.buf) < end:
            self.buf += self.sock.recv(1 << 20)
        data, self.buf = self.buf[2 + d:end - 1], self.buf[end:]
        return np.frombuffer(data, "<f4")

    def close(self) -> None:
        self.sock.close()


def block(data: bytes) -> bytes:
    n = str(len(data)).encode()
    return b"#" + str(len(n)).encode() + n + data


def pulses(seq: int, kind: str, width: float, cells, amps) -> bytes:
    rec = np.empty(len(cells), RECORD)
    rec["cell"], rec["amp"] = cells, amps
    return f"PULS? {seq},{kind},{width},".encode() + block(rec.tobytes()) + b"\n"


@pytest.fixture
def server():
    with ScpiServer(make_controller(rows=16, cols=32), "127.0.0.1", 0) as s:
        yield s


def test_identity_size_limits_opc_time(server) -> None:
    c = Client(server.address)
    assert c.query("*IDN?").startswith("pcmlab,MockPCM-16x32,1,")
    assert c.query("arr:size?") == "16,32"  # headers are case-insensitive
    assert c.query("ARR:LIM?\r") == "250,500,10,10000"  # \r before \n is ignored
    assert c.query("*OPC?") == "1"
    t0 = float(c.query("SYST:TIME?"))
    c.send(b"SYST:TIME:ADV 3600\n")
    assert float(c.query("SYST:TIME?")) >= t0 + 3600
    assert c.query("SYST:ERR?") == '0,"No error"'
    c.close()


def test_binary_blocks_both_ways_and_exactly_once(server) -> None:
    chip = server.controller.chip
    c = Client(server.address)
    c.send(pulses(7, "SET", 500, [1, 2, 2], [150.0, 150.0, 150.0]))
    assert c.line() == b"7,3"
    assert list(chip.pulse_count[:4]) == [0, 1, 2, 0]
    # the same seq again, whatever the payload: stored reply, nothing applied
    c.send(pulses(7, "RESET", 50, [3], [480.0]))
    assert c.line() == b"7,3"
    assert chip.pulse_count[3] == 0
    c.send(b"READ? " + block(np.array([2, 1, 0], "<u4").tobytes()) + b"\n")
    g = c.block()
    assert g.shape == (3,) and g[0] > 5 and g[2] < 2
    c.send(b"READ:ARR?\n")
    assert c.block().shape == (16 * 32,)
    c.close()
    # replay memory survives connections and *RST
    c2 = Client(server.address)
    c2.send(b"*RST\n")
    c2.send(pulses(7, "SET", 500, [9], [150.0]))
    assert c2.line() == b"7,3"
    c2.close()


def test_refusals_are_all_or_nothing_with_errors_in_the_queue(server) -> None:
    chip = server.controller.chip
    c = Client(server.address)
    c.send(pulses(11, "SET", 500, [1, 2], [100.0, 300.0]))  # 300 µA > 250 µA limit
    assert c.line() == b"11,0"
    assert chip.pulse_count.sum() == 0
    code, msg = c.query("SYST:ERR?").split(",", 1)
    assert code == "-222" and "250" in msg
    c.send(pulses(12, "SET", 5, [1], [100.0]))  # width below 10 ns
    assert c.line() == b"12,0"
    c.send(pulses(13, "SET", 500, [16 * 32], [100.0]))  # cell out of range
    assert c.line() == b"13,0"
    c.send(b"PULS? x1,SET,500," + block(b"") + b"\n")  # malformed seq
    assert c.line() == b"0,0"
    c.send(b"READ? " + block(np.array([99999], "<u4").tobytes()) + b"\n")
    assert c.line() == b""  # a failed query replies with an empty line
    assert c.query("FOO:BAR?") == ""  # unknown query
    c.send(b"FOO:BAR\n")  # unknown command: no reply, an error
    c.send(b"SYST:TIME:ADV -5\n")
    c.send(b"SYST:TIME:ADV\n")
    errors = [c.query("SYST:ERR?") for _ in range(9)]
    codes = [int(e.split(",")[0]) for e in errors]
    assert codes == [-222, -222, -104, -222, -113, -113, -222, -109, 0]
    c.close()


def test_error_queue_overflow_and_clear(server) -> None:
    c = Client(server.address)
    for _ in range(40):
        c.send(b"NOPE\n")
    codes = [int(c.query("SYST:ERR?").split(",")[0]) for _ in range(33)]
    assert codes[:31] == [-113] * 31 and codes[31] == -350 and codes[32] == 0
    c.send(b"NOPE\n*CLS\n")
    assert c.query("SYST:ERR?") == '0,"No error"'
    c.close()


@pytest.mark.parametrize(
    ("garbage", "code", "closes"),
    [(b"\xff\xfe\x00garbage\n", -113, True),  # non-ASCII header
     (b"READ? #9" + b"9" * 9 + b"\n", -223, True),  # a header claiming ~1 GB
     (b"READ? #3010abcd\n", -161, False),  # swallows the next message: 10 bytes, not cells
     (b"READ? #x\n", -161, True),  # not a block header
     (b"PULS? 5,SET,500,#18abcdefgh?\n", -161, True),  # no newline after the block
     (b"X" * 5000 + b"\n", -113, True)],  # a header that never ends
)
def test_malformed_input_then_the_next_client_is_served(server, garbage, code,
                                                        closes) -> None:
    chip = server.controller.chip
    chip.apply_pulses(np.arange(10), "SET", 150.0, 500)
    before = chip.devices.g_prog_us.copy()
    c = Client(server.address)
    c.send(garbage)
    c.send(b"*OPC?\n")
    c.sock.settimeout(2)
    if closes:
        with pytest.raises((ConnectionError, OSError)):  # the server closed this connection
            c.line()
    else:
        assert c.line() == b""  # the failed query's empty reply; the connection goes on
    c.close()
    c2 = Client(server.address)
    assert c2.query("*IDN?").startswith("pcmlab,")
    errors = []
    while (e := c2.query("SYST:ERR?")) != '0,"No error"':
        errors.append(int(e.split(",")[0]))
    assert code in errors
    np.testing.assert_array_equal(before, chip.devices.g_prog_us)
    c2.close()


def test_one_connection_at_a_time(server) -> None:
    a = Client(server.address)
    assert a.query("*OPC?") == "1"
    b = Client(server.address)  # accepted by the kernel, served after `a` closes
    b.send(b"*OPC?\n")
    b.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        b.line()
    a.close()
    b.sock.settimeout(5)
    assert b.line() == b"1"
    b.close()


def test_error_messages_are_ascii_so_a_client_can_read_them(scpi_server) -> None:
    """A refused pulse's message names µA; SCPI strings are ASCII: it goes as "uA"."""
    from drivers.visa import VisaDriver
    from pcmlab.errors import DeviceError

    with VisaDriver(scpi_server.resource) as d:
        d._write("SYST:TIME:ADV -1")  # refused by the chip: -222 with a message
        code, message = d._pop_error()
        assert code == -222 and message.isascii()
    with socket.create_connection(scpi_server.address, timeout=5) as s:
        records = np.zeros(1, dtype=[("c", "<u4"), ("a", "<f4")])
        records["a"] = 1e6
        block = records.tobytes()
        s.sendall(b"PULS? 77,SET,100,#18" + block + b"\n")
        s.sendall(b"SYST:ERR?\n")
        reply = b""
        while reply.count(b"\n") < 2:
            reply += s.recv(4096)
    line = reply.split(b"\n")[1]
    assert line.startswith(b"-222,") and line.decode("ascii") and b"uA" in line
    with VisaDriver(scpi_server.resource) as d, pytest.raises(DeviceError, match="-222"):
        d._pulse_chunk(99, PulseKind.SET, 100.0, records.view(pulse_records(
            np.zeros(1, np.uint32), np.zeros(1, np.float32)).dtype))


def test_a_silent_client_does_not_block_the_next_one() -> None:
    """Without the idle timeout the second client's recv times out: nobody answers it."""
    with ScpiServer(make_controller(), "127.0.0.1", 0, idle_timeout_s=0.5) as srv:
        silent = socket.create_connection(srv.address, timeout=5)  # connects, says nothing
        try:
            with socket.create_connection(srv.address, timeout=5) as s:
                s.sendall(b"*IDN?\n")
                assert s.recv(256).startswith(b"pcmlab,")
        finally:
            silent.close()
        for _ in range(200):  # many short connections in a row: every one is served
            with socket.create_connection(srv.address, timeout=5) as s:
                s.sendall(b"ARR:SIZE?\n")
                assert s.recv(64) == b"64,128\n"


def test_a_client_that_pauses_inside_a_block_keeps_its_place(server) -> None:
    """The server's receive timeout (0.5 s) falls inside the message: it waits on, and
    the message completes (it used to start over mid-block, take the rest for a new
    message and close the connection)."""
    import time

    c = Client(server.address)
    cells = np.array([3, 5], dtype="<u4").tobytes()
    message = b"READ? " + block(cells) + b"\n"
    c.send(message[:9])  # "READ? #18": the block's head, then a pause
    time.sleep(1.2)
    c.send(message[9:12])
    time.sleep(0.8)
    c.send(message[12:])
    values = c.block()
    assert values.shape == (2,) and np.isfinite(values).all()
    assert c.query("SYST:ERR?").startswith("0,")
    c.close()
