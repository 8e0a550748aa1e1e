"""The wire layer of ``pcmlab check`` for SCPI chips: raw commands that bypass the driver.

The chip's firmware must refuse what a careful driver would never send (another client
may send it), keep its error queue oldest first, and apply a pulse batch once however
often it is repeated with the same sequence number, also from a new connection. Each check
talks to the chip over a plain pyvisa session (the driver's connection closed first: a
controller may serve one connection at a time) and pulses only the cells it is given.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pyvisa
from pyvisa.util import to_ieee_block

from drivers.base import ChipInfo
from pcmlab.errors import TransportError
from pcmlab.scpi import DEFAULT, Dialect
from protocols.conformance_rules import CheckConfig, CheckResult

log = logging.getLogger(__name__)

_RECORD = np.dtype([("cell", "<u4"), ("amplitude_ua", "<f4")])


class ScpiWire:
    """A raw SCPI session: text and block messages, nothing checked on this side."""

    def __init__(self, resource: str, timeout_s: float = 10.0,
                 dialect: Dialect | None = None) -> None:
        self.resource = resource
        self.d = dialect or DEFAULT
        self._rm = pyvisa.ResourceManager("@py")
        try:
            self._inst: Any = self._rm.open_resource(resource,
                                                     open_timeout=int(timeout_s * 1000))
        except (pyvisa.errors.Error, OSError, ValueError) as exc:
            self._rm.close()
            raise TransportError(f"{resource}: cannot open a raw session ({exc})") from None
        self._inst.timeout = int(timeout_s * 1000)
        self._inst.read_termination = self._inst.write_termination = "\n"

    def close(self) -> None:
        try:
            self._inst.close()
        finally:
            self._rm.close()

    def query(self, text: str) -> str:
        return str(self._inst.query(text)).strip()

    def write(self, text: str) -> None:
        self._inst.write(text)

    def pulse(self, seq: int, kind: str, width_ns: float, cells: npt.ArrayLike,
              amplitude_ua: npt.ArrayLike) -> str:
        """A pulse batch; the reply as "seq,applied" whatever the dialect's form."""
        rec = np.zeros(np.size(cells), dtype=self.d.record_dtype)
        rec["cell"] = cells
        rec["amp"] = amplitude_ua
        op = self.d["pulse"]
        head = op.message(seq=seq, kind=self.d.kinds[kind], width_ns=float(width_ns))
        self._inst.write_raw(head.encode() + to_ieee_block(rec.tobytes(), "B") + b"\n")
        reply = str(self._inst.read()).strip()
        fields = op.parse_reply(reply)
        return reply if not fields else f"{fields['seq']},{fields['applied']}"

    def read(self, cells: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
        block = to_ieee_block(cells.astype(self.d.cell_dtype).tobytes(), "B")
        self._inst.write_raw(self.d["read"].message().encode() + block + b"\n")
        return np.asarray(self._inst.read_binary_values(
            datatype=self.d.conductance_dtype.char, is_big_endian=self.d.byte_order == ">",
            container=np.array), dtype=np.float64)

    def errors(self, n: int) -> list[int]:
        """Error codes, oldest first, as pcmlab's names number them (the dialect's codes
        translated back)."""
        op = self.d["error"]
        back = {v: k for k, v in self.d.errors.items()}
        out = []
        for _ in range(n):
            fields = op.parse_reply(self.query(op.message())) or {"code": "nan"}
            try:
                code = int(fields["code"])
            except ValueError:
                code = 1  # not a code at all: never what a check expects
            out.append(DEFAULT.errors[back[code]] if code in back else code)
        return out

    def raw(self, data: bytes) -> None:
        self._inst.write_raw(data)


@contextlib.contextmanager
def _session(resource: str, dialect: Dialect | None = None) -> Iterator[ScpiWire]:
    wire = ScpiWire(resource, dialect=dialect)
    try:
        yield wire
    finally:
        wire.close()


def scpi_wire_checks(resource: str, info: ChipInfo, cells: npt.NDArray[np.uint32],
                     config: CheckConfig | None = None, dialect: Dialect | None = None,
                     out: list[CheckResult] | None = None) -> list[CheckResult]:
    """The wire rules on ``cells`` of the SCPI chip at ``resource`` (speaking ``dialect``,
    default pcmlab's), appended to ``out`` as each is checked (what was checked is there
    if a later one raises)."""
    d = dialect or DEFAULT
    lim = info.limits
    set_ua, reset_ua, set_w, reset_w = (config or CheckConfig()).pulses(lim)
    seq = random.SystemRandom().randrange(1, 2**31)
    out = [] if out is None else out

    def next_seq() -> int:
        nonlocal seq
        seq = (seq + 1) & 0xFFFFFFFF
        return seq

    def reset(wire: ScpiWire, c: npt.NDArray[np.uint32]) -> None:
        wire.pulse(next_seq(), "RESET", reset_w, c, np.full(c.size, reset_ua))

    # the error queue: oldest first, then empty
    with _session(resource, d) as wire:
        wire.write(d["clear_errors"].message())
        undefined = wire.query("PCMLAB:NO:SUCH:HEADER?")
        c = cells[:2]
        refused = wire.pulse(next_seq(), "SET", set_w, c, [set_ua, 2 * lim.max_set_ua])
        codes = wire.errors(3)
        want = [DEFAULT.errors[k] for k in ("undefined_header", "data_out_of_range", "none")]
        ok = undefined == "" and codes == want
        out.append(CheckResult(
            "wire-error-queue", "the error queue is oldest first and clears",
            "pass" if ok else "fail",
            f"undefined header replied {undefined!r}, bad PULS? replied {refused!r}; "
            f"the error query x3 gave {codes} (expected {want})",
            "errors come back in the order they happened" if ok else
            "the driver reports the wrong error for a failed command"))

    # the firmware refuses an out-of-range batch whole
    with _session(resource, d) as wire:
        c = cells[2:18]
        reset(wire, c)
        before = wire.read(c)
        amps = np.full(c.size, set_ua)
        amps[-1] = 2 * lim.max_set_ua
        s = next_seq()
        reply = wire.pulse(s, "SET", set_w, c, amps)
        after = wire.read(c)
        moved = float(np.max(after[:-1] - before[:-1]))
        code = wire.errors(1)[0]
        ok = reply == f"{s},0" and code == DEFAULT.errors["data_out_of_range"] and moved < 1.5
        out.append(CheckResult(
            "wire-limits", "the firmware refuses an out-of-range batch whole (-222)",
            "pass" if ok else "fail",
            f"reply {reply!r}, error {code}, largest change of a good record {moved:.2f} µS",
            "what another client sends cannot push a device past its limits" if ok else
            "the chip applies what it should refuse: a clipped pulse looks like a slow device"))

    # exactly once: the same seq again, and again from a new connection
    c = cells[18:50]
    s = 0
    with _session(resource, d) as wire:
        reset(wire, c)
        s = next_seq()
        first = wire.pulse(s, "SET", set_w, c, np.full(c.size, set_ua))
        g1 = wire.read(c)
        again = wire.pulse(s, "SET", set_w, c, np.full(c.size, set_ua))
        g2 = wire.read(c)
    with _session(resource, d) as wire:
        third = wire.pulse(s, "SET", set_w, c, np.full(c.size, set_ua))
        g3 = wire.read(c)
    rise = float(np.median(g1))
    extra = max(float(np.median(g2 - g1)), float(np.median(g3 - g1)))
    ok = first == again == third == f"{s},{c.size}" and extra < max(0.25 * rise, 0.5)
    out.append(CheckResult(
        "wire-exactly-once", "a pulse batch repeated with its seq is applied once, also on a "
        "new connection", "pass" if ok else "fail",
        f"replies {first!r}, {again!r}, {third!r}; first pulse +{rise:.2f} µS, the repeats "
        f"+{extra:.2f} µS more",
        "a retried batch after a timeout is not applied twice" if ok else
        "a retry pulses the devices again: a double pulse looks like device noise"))

    # fresh reads: the same READ? block after a RESET answers the new state (a controller
    # that caches replies would hand back an old measurement)
    with _session(resource, d) as wire:
        c = cells[50:82]
        reset(wire, c)
        wire.pulse(next_seq(), "SET", set_w, c, np.full(c.size, set_ua))
        rise = float(np.median(wire.read(c)))
        reset(wire, c)
        again = float(np.median(wire.read(c)))
    fresh = again < 0.5 * rise
    out.append(CheckResult(
        "wire-reads-fresh", "a read is executed every time, never answered from a memory",
        "pass" if fresh else "fail",
        f"the same READ? block after a RESET: median {again:.2f} µS (before the RESET "
        f"{rise:.2f})", "every readout is a new measurement" if fresh else
        "a repeated read returns an old measurement: stale conductances in the file"))

    # a malformed block is refused and the chip keeps serving
    with _session(resource, d) as wire:
        wire.write(d["clear_errors"].message())
        with contextlib.suppress(pyvisa.errors.Error, OSError):  # the chip may hang up
            # not a digit after "#": a bad block header
            wire.raw(d["read"].message().encode() + b"#Z\n")
    with _session(resource, d) as wire:
        code = wire.errors(1)[0]
        ident = wire.query(d["identify"].message())
    ok = code == DEFAULT.errors["block_data"] and ident == info.identity
    out.append(CheckResult(
        "wire-malformed", "a malformed block is refused (-161) and the chip keeps serving",
        "pass" if ok else "fail", f"error {code}; *IDN? afterwards {ident!r}",
        "a broken client cannot take the chip down" if ok else
        "a malformed message is not reported or stops the chip"))
    for r in out:
        log.info("%s: %s", r.rule, r.status)
    return out


class SerialWire:
    """A raw framed-binary session on a serial port: frames out, frames in."""

    def __init__(self, port: str, timeout_s: float = 2.0) -> None:
        import serial

        from pcmlab import framing

        self._framing = framing
        try:
            self._ser = serial.serial_for_url(port, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"{port}: cannot open a raw session ({exc})") from None
        self._decoder = framing.Decoder()
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._ser.close()

    def send(self, frame: bytes) -> Any:
        """Send ``frame`` and return the reply frame with its seq (None if none came)."""
        import time

        seq = self._framing.HEADER.unpack_from(frame, 1)[1]
        self._ser.write(frame)
        self._ser.flush()
        return self._framing.await_reply(self._ser, self._decoder, seq,
                                         time.monotonic() + self.timeout_s)


def serial_wire_checks(port: str, info: ChipInfo, cells: npt.NDArray[np.uint32],
                       config: CheckConfig | None = None,
                       out: list[CheckResult] | None = None) -> list[CheckResult]:
    """The wire rules on ``cells`` of the framed-binary chip on ``port``, appended to
    ``out`` as each is checked."""
    import struct

    from pcmlab import framing
    from pcmlab.framing import Opcode

    lim = info.limits
    set_ua, reset_ua, set_w, reset_w = (config or CheckConfig()).pulses(lim)
    seq = random.SystemRandom().randrange(1, 2**16)
    out = [] if out is None else out

    def frame(opcode: int, payload: bytes = b"") -> bytes:
        nonlocal seq
        seq = (seq + 1) & 0xFFFF
        return framing.encode(seq, opcode, payload)

    def pulse_payload(kind: str, width: float, c: npt.ArrayLike, amps: npt.ArrayLike) -> bytes:
        rec = np.zeros(np.size(c), dtype=_RECORD)
        rec["cell"], rec["amplitude_ua"] = c, amps
        return framing.PULSE_HEAD.pack(framing.KIND_CODES[kind], width) + rec.tobytes()

    def read(wire: SerialWire, c: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
        reply = wire.send(frame(Opcode.READ, c.astype("<u4").tobytes()))
        if reply is None or reply.is_nak:
            raise TransportError(f"{port}: READ got {reply}")
        return np.frombuffer(reply.payload, "<f4").astype(np.float64)

    def session(wire: SerialWire) -> bool:
        sid = random.SystemRandom().randrange(1, 1 << 64)
        reply = wire.send(frame(Opcode.SESSION, framing.SESSION_REQUEST.pack(sid)))
        return (reply is not None and not reply.is_nak
                and reply.payload == framing.SESSION_REPLY.pack(framing.PROTOCOL_VERSION, sid))

    wire = SerialWire(port)
    try:
        opened = session(wire)
        # the firmware refuses an out-of-range batch whole
        c = cells[:16]
        wire.send(frame(Opcode.PULSE, pulse_payload("RESET", reset_w, c,
                                                    np.full(c.size, reset_ua))))
        before = read(wire, c)
        amps = np.full(c.size, set_ua)
        amps[-1] = 2 * lim.max_set_ua
        reply = wire.send(frame(Opcode.PULSE, pulse_payload("SET", set_w, c, amps)))
        after = read(wire, c)
        moved = float(np.max(after[:-1] - before[:-1]))
        code = reply.nak()[0] if reply is not None and reply.is_nak else None
        ok = code == DEFAULT.errors["data_out_of_range"] and moved < 1.5
        out.append(CheckResult(
            "wire-limits", "the firmware refuses an out-of-range batch whole (NAK -222)",
            "pass" if ok else "fail", f"reply NAK {code}; largest change of a good record "
            f"{moved:.2f} µS", "what another client sends cannot push a device past its "
            "limits" if ok else "the chip applies what it should refuse"))

        # exactly once: a pulse frame repeated (same seq) is applied once; a repeated read
        # is executed again
        c = cells[16:48]
        wire.send(frame(Opcode.PULSE, pulse_payload("RESET", reset_w, c,
                                                    np.full(c.size, reset_ua))))
        pulse = frame(Opcode.PULSE, pulse_payload("SET", set_w, c, np.full(c.size, set_ua)))
        r1 = wire.send(pulse)
        read_frame = frame(Opcode.READ, c.astype("<u4").tobytes())
        g1 = np.frombuffer(wire.send(read_frame).payload, "<f4").astype(np.float64)
        r2 = wire.send(pulse)
        g2 = read(wire, c)
        applied = [None if r is None or r.is_nak else struct.unpack("<I", r.payload)[0]
                   for r in (r1, r2)]
        rise, extra = float(np.median(g1)), float(np.median(g2 - g1))
        ok = applied == [c.size, c.size] and extra < max(0.25 * rise, 0.5)
        out.append(CheckResult(
            "wire-exactly-once", "a pulse frame repeated with its seq is applied once",
            "pass" if ok else "fail", f"ACKs {applied}; first pulse +{rise:.2f} µS, the "
            f"repeat +{extra:.2f} µS more", "a retried frame is not applied twice" if ok
            else "a retry pulses the devices again"))
        wire.send(frame(Opcode.PULSE, pulse_payload("RESET", reset_w, c,
                                                    np.full(c.size, reset_ua))))
        g3 = np.frombuffer(wire.send(read_frame).payload, "<f4").astype(np.float64)
        fresh = float(np.median(g3)) < 0.5 * rise
        out.append(CheckResult(
            "wire-reads-fresh", "a read is executed every time, never answered from the "
            "replay memory", "pass" if fresh else "fail",
            f"the same READ frame after a RESET: median {np.median(g3):.2f} µS (before the "
            f"RESET {rise:.2f})", "every readout is a new measurement" if fresh else
            "a repeated read returns an old measurement: stale conductances in the file"))

        # a new session never gets an earlier session's reply: the first session's pulse
        # frame, byte for byte, sent again in a new session runs
        c = cells[48:80]
        wire.send(frame(Opcode.PULSE, pulse_payload("RESET", reset_w, c,
                                                    np.full(c.size, reset_ua))))
        pulse = frame(Opcode.PULSE, pulse_payload("SET", set_w, c, np.full(c.size, set_ua)))
        wire.send(pulse)
        rise = float(np.median(read(wire, c)))
        wire.send(frame(Opcode.PULSE, pulse_payload("RESET", reset_w, c,
                                                    np.full(c.size, reset_ua))))
        reopened = session(wire)
        wire.send(pulse)
        again = float(np.median(read(wire, c)))
        ok = opened and reopened and again > 0.5 * rise
        out.append(CheckResult(
            "wire-sessions", "a new session (SESSION) never gets an earlier session's "
            "replies", "pass" if ok else "fail", f"SESSION answered: {opened and reopened}; "
            f"the first session's SET frame in a new session: median {again:.2f} µS "
            f"(first time {rise:.2f})", "a new session's commands always run" if ok else
            "a new session was answered from an earlier session's memory"))

        # a corrupted frame is dropped and the link keeps answering
        bad = bytearray(frame(Opcode.IDENTIFY))
        bad[-1] ^= 0xFF
        lost = wire.send(bytes(bad))
        ident = wire.send(frame(Opcode.IDENTIFY))
        text = None if ident is None else ident.payload.decode("utf-8", "replace")
        ok = lost is None and text == info.identity
        out.append(CheckResult(
            "wire-malformed", "a frame with a bad CRC is dropped and the link keeps answering",
            "pass" if ok else "fail", f"bad frame answered: {lost is not None}; IDENTIFY "
            f"afterwards {text!r}", "line noise cannot make the chip act" if ok else
            "a corrupted frame is executed or stops the link"))
    finally:
        wire.close()
    for r in out:
        log.info("%s: %s", r.rule, r.status)
    return out
