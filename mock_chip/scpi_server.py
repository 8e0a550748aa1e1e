"""The mock chip behind SCPI over TCP (what pyvisa opens as TCPIP0::host::port::SOCKET).

One connection at a time; the next client waits until the first closes. Grammar and
rules: DESIGN.md, "SCPI over VISA". A malformed message queues an error; where the byte
stream can no longer be trusted (bad block header, oversized block, non-ASCII header) the
connection is closed, and the server goes on with the next client, array intact.
"""

from __future__ import annotations

import logging
import re
import socket

import numpy as np

from mock_chip.controller import (
    BLOCK_DATA_ERROR,
    DATA_TYPE_ERROR,
    MISSING_PARAMETER,
    TOO_MUCH_DATA,
    UNDEFINED_HEADER,
    CommandError,
    Controller,
)
from mock_chip.faults import FaultInjector, TransportFaults
from mock_chip.serving import BackgroundServer
from pcmlab.pulses import RECORD

log = logging.getLogger(__name__)

MAX_BLOCK = 1 << 26  # bytes
MAX_HEADER = 64
MAX_LINE = 4096
_SEQ = re.compile(r"^\d{1,10}$")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _ClosedError(Exception):
    """The client went away, or the stream is beyond repair: close this connection."""


class _Reader:
    """Buffered reads from a socket with hard size limits."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.conn.recv(1 << 20)
        if not chunk:
            raise _ClosedError("client closed")
        if _QUICKACK is not None:
            # Acknowledge at once: clients that send a block in small writes (pyvisa-py
            # sends 4 KiB at a time) would otherwise wait on Nagle + delayed ACK, 40 ms.
            self.conn.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        self.buf += chunk

    def until(self, stops: bytes, limit: int) -> tuple[bytes, int]:
        """Bytes up to the first of ``stops`` (not included) and that stop byte; more than
        ``limit`` bytes without one is an error."""
        while True:
            hits = [i for i in (self.buf.find(bytes([s]), 0, limit + 1) for s in stops)
                    if i >= 0]
            if hits:
                i = min(hits)
                stop = self.buf[i]
                out = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return out, stop
            if len(self.buf) > limit:
                raise CommandError(UNDEFINED_HEADER, "Undefined header; message too long")
            self._fill()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class ScpiServer(BackgroundServer):
    """Serve one controller over TCP, one client at a time."""

    _thread_name = "scpi-server"

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 5025, *,
                 faults: TransportFaults | None = None) -> None:
        super().__init__()
        self.controller = controller
        self.faults = FaultInjector(faults)
        self._sock = socket.create_server((host, port), backlog=8)
        self._sock.settimeout(0.2)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self.connections = 0

    @property
    def resource(self) -> str:
        host, port = self.address
        return f"TCPIP0::{host}::{port}::SOCKET"

    # -- lifecycle -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log.info("SCPI server on %s:%d", *self.address)
        try:
            while not self._stop.is_set():
                try:
                    conn, peer = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.connections += 1
                log.info("client %s connected", peer)
                with conn:
                    self._serve(conn)
                log.info("client %s gone", peer)
        finally:
            self._sock.close()

    # -- one connection --------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies go out whole
        reader = _Reader(conn)
        while not self._stop.is_set():
            try:
                reply = self._message(reader)
            except TimeoutError:
                continue
            except (_ClosedError, ConnectionError):
                return
            except CommandError as exc:  # the stream cannot be trusted any more
                self.controller.errors.push(exc.code, exc.message)
                log.warning("closing connection: %s", exc.message)
                return
            if reply is None:
                continue
            if not self._send(conn, reply):
                return

    def _send(self, conn: socket.socket, reply: bytes) -> bool:
        """Send a reply, through the fault injector. False: the connection is dropped."""
        f = self.faults
        if f.draw("disconnect"):
            return False
        if f.draw("drop_reply"):
            return True
        if f.draw("delay_reply"):
            self._stop.wait(f.faults.delay_s)
        if f.draw("corrupt_reply"):
            # TCP delivers bytes intact; what a client must catch is a garbled reply from
            # the controller: its first byte replaced, so no client can take it as valid
            reply = b"\x15" + reply[1:]
        try:
            conn.sendall(reply)
        except OSError:
            return False
        return True

    def _message(self, r: _Reader) -> bytes | None:
        """Read and run one message; the reply (with its newline), or None for none."""
        raw, stop = r.until(b" \n", MAX_HEADER)
        if not raw.isascii():
            raise CommandError(UNDEFINED_HEADER, "Undefined header; not ASCII")
        header = raw.decode().strip().upper()
        at_end = stop == ord("\n")
        if header in ("PULS?", "READ?"):
            if at_end:
                return self._fail(header, MISSING_PARAMETER, "Missing parameter")
            prefix, _ = r.until(b"#\n", MAX_LINE)
            block = self._block(r)
            return self._with_block(header, prefix.decode("ascii", "replace"), block)
        args = "" if at_end else r.until(b"\n", MAX_LINE)[0].decode("ascii", "replace")
        return self._text(header, args.strip())

    def _block(self, r: _Reader) -> bytes:
        """An IEEE 488.2 definite-length block after its '#', then the message's newline."""
        digits = r.exact(1)
        if not digits.isdigit() or digits == b"0":
            raise CommandError(BLOCK_DATA_ERROR, "Block data error; bad block header")
        size_text = r.exact(int(digits))
        if not size_text.isdigit():
            raise CommandError(BLOCK_DATA_ERROR, "Block data error; bad block length")
        size = int(size_text)
        if size > MAX_BLOCK:
            raise CommandError(TOO_MUCH_DATA, f"Too much data; block of {size} bytes")
        data = r.exact(size)
        end = r.exact(1)
        if end == b"\r":
            end = r.exact(1)
        if end != b"\n":
            raise CommandError(BLOCK_DATA_ERROR, "Block data error; block length does not "
                               "match the data")
        return data

    def _fail(self, header: str, code: int, message: str) -> bytes | None:
        self.controller.errors.push(code, message)
        return b"\n" if header.endswith("?") else None

    # -- commands --------------------------------------------------------------------------
    def _with_block(self, header: str, prefix: str, block: bytes) -> bytes | None:
        c = self.controller
        if header == "READ?":
            if prefix.strip() or len(block) % 4:
                return self._fail(header, BLOCK_DATA_ERROR, "Block data error; expected "
                                  "uint32 cells")
            if self.faults.draw("drop_request"):
                return None
            try:
                g = c.read(np.frombuffer(block, "<u4"))
            except CommandError as exc:
                return self._fail(header, exc.code, exc.message)
            return _block_reply(g)
        # PULS? <seq>,<kind>,<width>,<block>
        parts = [p.strip() for p in prefix.split(",")]
        if len(parts) != 4 or parts[3]:
            c.errors.push(MISSING_PARAMETER, "Missing parameter; PULS? <seq>,<kind>,<width>,"
                          "<block>")
            seq_text = parts[0] if parts else ""
            return (f"{seq_text},0\n".encode() if _SEQ.match(seq_text) else b"0,0\n")
        seq_text, kind, width_text = parts[:3]
        if not _SEQ.match(seq_text) or int(seq_text) > 0xFFFFFFFF:
            c.errors.push(DATA_TYPE_ERROR, f"Data type error; sequence number '{seq_text}'")
            return b"0,0\n"
        seq = int(seq_text)
        with c.lock:
            stored = c.scpi_replies.get(seq)
            if stored is not None:
                log.info("PULS? seq %d repeated: stored reply sent, nothing applied", seq)
                return stored
            if self.faults.draw("drop_request"):
                return None
            reply = self._pulse(seq, kind, width_text, block)
            c.scpi_replies.put(seq, reply)
            return reply

    def _pulse(self, seq: int, kind: str, width_text: str, block: bytes) -> bytes:
        c = self.controller
        refused = f"{seq},0\n".encode()
        if len(block) % RECORD.itemsize:
            c.errors.push(BLOCK_DATA_ERROR, "Block data error; records are 8 bytes")
            return refused
        try:
            width = float(width_text)
        except ValueError:
            c.errors.push(DATA_TYPE_ERROR, f"Data type error; width '{width_text}'")
            return refused
        records = np.frombuffer(block, RECORD)
        try:
            n = c.pulse(kind, width, records["cell"], records["amp"])
        except CommandError as exc:
            c.errors.push(exc.code, exc.message)
            return refused
        return f"{seq},{n}\n".encode()

    def _text(self, header: str, args: str) -> bytes | None:
        c = self.controller
        if header == "*IDN?":
            return (c.identity() + "\n").encode()
        if header == "*RST":
            c.reset()
            return None
        if header == "*CLS":
            c.errors.clear()
            return None
        if header == "*OPC?":
            return b"1\n"
        if header == "SYST:ERR?":
            code, message = c.errors.pop()
            # SCPI strings are ASCII (a client decodes them so): "µA" goes as "uA"
            text = message.replace("µ", "u").replace('"', "'")
            return f'{code},"{text}"\n'.encode("ascii", errors="replace")
        if header == "ARR:SIZE?":
            return "{},{}\n".format(*c.size()).encode()
        if header == "ARR:LIM?":
            return ",".join(f"{v:g}" for v in c.limits()).encode() + b"\n"
        if header == "READ:ARR?":
            if self.faults.draw("drop_request"):
                return None
            return _block_reply(c.read(None))
        if header == "SYST:TIME?":
            return f"{c.now():.6f}\n".encode()
        if header == "SYST:TIME:ADV":
            if not args:
                return self._fail(header, MISSING_PARAMETER, "Missing parameter")
            try:
                dt = float(args)
            except ValueError:
                return self._fail(header, DATA_TYPE_ERROR, f"Data type error; '{args}'")
            try:
                c.advance(dt)
            except CommandError as exc:
                return self._fail(header, exc.code, exc.message)
            return None
        return self._fail(header, UNDEFINED_HEADER, f"Undefined header; '{header}'")


def _block_reply(values: np.ndarray) -> bytes:
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    size = str(len(data))
    return b"#" + str(len(size)).encode() + size.encode() + data + b"\n"
