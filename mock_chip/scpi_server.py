"""The mock chip behind SCPI over TCP (what pyvisa opens as TCPIP0::host::port::SOCKET).

One connection at a time; the next client waits until the first closes. Grammar and
rules: docs/scpi-protocol.md. The words are a dialect (``pcmlab.scpi``): pcmlab's own by
default, or any dialect file, the same one ``VisaDriver`` reads. A malformed message
queues an error; where the byte stream can no longer be trusted (bad block header,
oversized block, non-ASCII header) the connection is closed, and the server goes on with
the next client, array intact.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time

import numpy as np
from pyvisa.util import to_ieee_block

from mock_chip.controller import (
    BLOCK_DATA_ERROR,
    DATA_OUT_OF_RANGE,
    DATA_TYPE_ERROR,
    MISSING_PARAMETER,
    TOO_MUCH_DATA,
    UNDEFINED_HEADER,
    CommandError,
    Controller,
)
from mock_chip.faults import FaultInjector, TransportFaults
from mock_chip.serving import BackgroundServer
from pcmlab.mvm import CODE, MvmFormatError, decode_request
from pcmlab.scpi import DEFAULT, Dialect, Operation

log = logging.getLogger(__name__)

MAX_BLOCK = 1 << 26  # bytes
MAX_HEADER = 64
MAX_LINE = 4096
_SEQ = re.compile(r"^\d{1,10}$")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _ClosedError(Exception):
    """The client went away, or the stream is beyond repair: close this connection."""


class _Reader:
    """Buffered reads from a socket with hard size limits.

    A receive timeout between messages is the caller's (it decides about idle clients);
    within a message the reader waits on, so a client that pauses in the middle of a block
    does not lose its place, until ``stall_s`` without a byte (then the connection goes)."""

    def __init__(self, conn: socket.socket, stop: threading.Event | None = None,
                 stall_s: float = 30.0) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.stop = stop or threading.Event()
        self.stall_s = stall_s
        self.partial = False  # part of a message has been taken from the stream

    def begin(self) -> None:
        """A new message starts here."""
        self.partial = False

    def _fill(self) -> None:
        since = time.monotonic()
        while True:
            try:
                chunk = self.conn.recv(1 << 20)
                break
            except TimeoutError:
                if not self.partial and not self.buf:
                    raise  # idle between messages
                if self.stop.is_set():
                    raise _ClosedError("server stopping") from None
                if time.monotonic() - since > self.stall_s:
                    raise _ClosedError(f"client stalled {self.stall_s:g} s inside a "
                                       "message") from None
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
                self.partial = True
                return out, stop
            if len(self.buf) > limit:
                raise CommandError(UNDEFINED_HEADER, "Undefined header; message too long")
            self._fill()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.partial = True
        return out


class ScpiServer(BackgroundServer):
    """Serve one controller over TCP, one client at a time."""

    _thread_name = "scpi-server"

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 5025, *,
                 faults: TransportFaults | None = None, dialect: Dialect | None = None,
                 idle_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.controller = controller
        self.idle_timeout_s = idle_timeout_s  # a client silent this long is let go
        self.dialect = dialect or DEFAULT
        self._ops = self.dialect.by_header()
        self.faults = FaultInjector(faults)
        # a deep backlog: many short connections must not overflow it (each overflow costs
        # the client a SYN retransmission, about 1 s)
        self._sock = socket.create_server((host, port), backlog=socket.SOMAXCONN)
        self._sock.settimeout(0.2)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self.connections = 0
        self._stale: dict[bytes, bytes] = {}  # the "stale-reads" violation's memory

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
        reader = _Reader(conn, self._stop, self.idle_timeout_s)
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                reader.begin()
                reply = self._message(reader)
                last = time.monotonic()
            except TimeoutError:
                if time.monotonic() - last > self.idle_timeout_s and not reader.buf:
                    log.warning("closing a connection idle for %.1f s: the next client is "
                                "waiting", self.idle_timeout_s)
                    return
                continue
            except (_ClosedError, ConnectionError):
                return
            except CommandError as exc:  # the stream cannot be trusted any more
                if "silent-malformed" not in self.controller.violations:
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
        op = self._ops.get(header)
        self.faults.scope(op is not None and op.name == "pulse")
        if op is not None and "block" in op.args:
            if at_end:
                return self._fail(header, MISSING_PARAMETER, "Missing parameter")
            prefix, _ = r.until(b"#\n", MAX_LINE)
            block = self._block(r)
            return self._with_block(op, prefix.decode("ascii", "replace"), block)
        args = "" if at_end else r.until(b"\n", MAX_LINE)[0].decode("ascii", "replace")
        return self._text(header, op, args.strip())

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
    def _with_block(self, op: Operation, prefix: str, block: bytes) -> bytes | None:
        c, d = self.controller, self.dialect
        header = op.header
        if op.name == "mvm":  # a query: executed every time, never from the replay memory
            if prefix.strip():
                return self._fail(header, BLOCK_DATA_ERROR, "Block data error; MVM? takes "
                                  "the block alone")
            try:
                request = decode_request(block)
            except MvmFormatError as exc:
                return self._fail(header, BLOCK_DATA_ERROR, f"Block data error; {exc}")
            if self.faults.draw("drop_request"):
                return None
            try:
                codes = c.mvm(request)
            except CommandError as exc:
                return self._fail(header, exc.code, exc.message)
            return to_ieee_block(np.ascontiguousarray(codes, CODE).tobytes(), "B") + b"\n"
        if op.name == "read":
            if prefix.strip() or len(block) % d.cell_dtype.itemsize:
                return self._fail(header, BLOCK_DATA_ERROR, "Block data error; expected "
                                  f"{d.cell_dtype.itemsize}-byte cells")
            if self.faults.draw("drop_request"):
                return None
            if "stale-reads" in c.violations and bytes(block) in self._stale:
                return self._stale[bytes(block)]  # broken on purpose: an old measurement
            try:
                g = c.read(np.frombuffer(block, d.cell_dtype).astype(np.uint32))
            except (CommandError, OverflowError, ValueError) as exc:
                return self._fail(header, getattr(exc, "code", DATA_OUT_OF_RANGE),
                                  getattr(exc, "message", str(exc)))
            reply = self._block_reply(g)
            if "stale-reads" in c.violations:
                self._stale[bytes(block)] = reply
            return reply
        # pulse: the arguments in the dialect's order, the block last
        names = [a for a in op.args if a != "block"]
        parts = [p.strip() for p in prefix.split(",")]
        if len(parts) != len(names) + 1 or parts[-1]:
            c.errors.push(MISSING_PARAMETER, f"Missing parameter; {op.header} takes "
                          f"{','.join(op.args)}")
            seq_text = dict(zip(names, parts, strict=False)).get("seq", "")
            return self._pulse_reply(int(seq_text) if _SEQ.match(seq_text) else 0, 0)
        args = dict(zip(names, parts[:-1], strict=True))
        seq_text = args["seq"]
        if not _SEQ.match(seq_text) or int(seq_text) > 0xFFFFFFFF:
            c.errors.push(DATA_TYPE_ERROR, f"Data type error; sequence number '{seq_text}'")
            return self._pulse_reply(0, 0)
        seq = int(seq_text)
        with c.lock:
            stored = c.scpi_replies.get(seq)
            if stored is not None:
                log.info("%s seq %d repeated: stored reply sent, nothing applied", op.header,
                         seq)
                return stored
            if self.faults.draw("drop_request"):
                return None
            reply = self._pulse(seq, args["kind"], args["width_ns"], block)
            c.scpi_replies.put(seq, reply)
            return reply

    def _pulse_reply(self, seq: int, applied: int) -> bytes:
        return (self.dialect["pulse"].format_reply(seq=seq, applied=applied) + "\n").encode()

    def _pulse(self, seq: int, word: str, width_text: str, block: bytes) -> bytes:
        c, d = self.controller, self.dialect
        refused = self._pulse_reply(seq, 0)
        record = d.record_dtype
        if len(block) % record.itemsize:
            c.errors.push(BLOCK_DATA_ERROR, f"Block data error; records are "
                          f"{record.itemsize} bytes")
            return refused
        kind = d.kind_of(word)
        if kind is None:
            c.errors.push(DATA_TYPE_ERROR, f"Data type error; kind '{word}'")
            return refused
        try:
            width = float(width_text)
        except ValueError:
            c.errors.push(DATA_TYPE_ERROR, f"Data type error; width '{width_text}'")
            return refused
        records = np.frombuffer(block, record)
        cells = records["cell"]
        if cells.size and (cells.min() < 0 or cells.max() > 0xFFFFFFFF):
            c.errors.push(DATA_OUT_OF_RANGE, "Data out of range; cell index")
            return refused
        try:
            n = c.pulse(kind, width, cells.astype(np.uint32),
                        records["amp"].astype(np.float32))
        except CommandError as exc:
            c.errors.push(exc.code, exc.message)
            return refused
        return self._pulse_reply(seq, n)

    def _block_reply(self, values: np.ndarray) -> bytes:
        data = np.ascontiguousarray(values, dtype=self.dialect.conductance_dtype).tobytes()
        return to_ieee_block(data, "B") + b"\n"

    def _text(self, header: str, op: Operation | None, args: str) -> bytes | None:
        c, d = self.controller, self.dialect
        # IEEE 488.2 common commands every controller has
        if header == "*RST":
            c.reset()
            return None
        if header == "*OPC?":
            return b"1\n"
        name = None if op is None else op.name

        def reply(**values: object) -> bytes:
            assert op is not None
            return (op.format_reply(**values) + "\n").encode("ascii", errors="replace")

        if name == "identify":
            return reply(identity=c.identity())
        if name == "clear_errors":
            c.errors.clear()
            return None
        if name == "error":
            code, message = c.errors.pop()
            # SCPI strings are ASCII (a client decodes them so): "µA" goes as "uA"
            text = message.replace("µ", "u").replace('"', "'")
            return reply(code=d.errors[_ERROR_NAME.get(code, "none")] if code else
                         d.errors["none"], message=text)
        if name == "size":
            rows, cols = c.size()
            return reply(rows=rows, cols=cols)
        if name == "limits":
            keys = ("max_set_ua", "max_reset_ua", "min_width_ns", "max_width_ns")
            return reply(**{k: f"{v:g}" for k, v in zip(keys, c.limits(), strict=True)})
        if name == "read_array":
            if self.faults.draw("drop_request"):
                return None
            return self._block_reply(c.read(None))
        if name == "time":
            return reply(time_s=f"{c.now():.6f}")
        if name == "mvm_config":
            try:
                spec = c.mvm_spec()
            except CommandError as exc:
                return self._fail(header, exc.code, exc.message)
            return reply(dac_bits=spec.dac_bits, adc_bits=spec.adc_bits,
                         max_vectors=spec.max_vectors)
        if name == "advance":
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


# the controller's (standard SCPI) codes by name: a dialect may number them otherwise
_ERROR_NAME = {code: name for name, code in DEFAULT.errors.items()}
