"""The mock chip behind the framed binary protocol, on a pseudo-terminal.

Clients open the printed device path with pyserial as they would a USB-serial board.
A repeated pulse or clock-advance frame (same session, seq and content) gets the stored
reply without running again; a partial frame whose bytes stop coming is given up after
``inter_byte_timeout_s`` and the stream searched for the next frame start.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import time
import tty
import zlib

import numpy as np

from mock_chip.controller import (
    BLOCK_DATA_ERROR,
    DATA_OUT_OF_RANGE,
    DATA_TYPE_ERROR,
    MISSING_PARAMETER,
    UNDEFINED_HEADER,
    CommandError,
    Controller,
)
from mock_chip.faults import FaultInjector, TransportFaults
from mock_chip.serving import BackgroundServer
from pcmlab import framing
from pcmlab.framing import Frame, Opcode
from pcmlab.mvm import CODE, MVM_SPEC, MvmFormatError, decode_request
from pcmlab.pulses import RECORD

log = logging.getLogger(__name__)

_KINDS = {v: k for k, v in framing.KIND_CODES.items()}


_EXACTLY_ONCE = frozenset({Opcode.PULSE, Opcode.ADVANCE})


class SerialServer(BackgroundServer):
    """Serve one controller on a pseudo-terminal."""

    _thread_name = "serial-server"

    def __init__(self, controller: Controller, *, faults: TransportFaults | None = None,
                 inter_byte_timeout_s: float = 0.2) -> None:
        super().__init__()
        self.controller = controller
        self.faults = FaultInjector(faults)
        self.inter_byte_timeout_s = inter_byte_timeout_s
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no line discipline: bytes pass as they are
        self.path = os.ttyname(self._slave)
        self._decoder = framing.Decoder()
        self.frames_handled = 0
        self.session_id = 0  # set by the host's SESSION frame; 0 before any handshake

    # -- lifecycle -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log.info("framed serial server on %s", self.path)
        last_byte = time.monotonic()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if ready:
                    try:
                        data = os.read(self._master, 1 << 20)
                    except OSError:  # no client has the slave open right now
                        time.sleep(0.05)
                        continue
                    self._decoder.feed(data)
                    last_byte = time.monotonic()
                elif (self._decoder.pending
                      and time.monotonic() - last_byte > self.inter_byte_timeout_s):
                    self._decoder.skip_start()  # that frame will never complete
                    last_byte = time.monotonic()
                for frame in self._decoder.frames():
                    self._handle(frame)
        finally:
            os.close(self._master)
            os.close(self._slave)

    # -- frames ----------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                select.select([], [self._master], [], 0.05)
                continue
            view = view[n:]

    def _handle(self, frame: Frame) -> None:
        self.frames_handled += 1
        c = self.controller
        f = self.faults
        f.scope(frame.opcode == Opcode.PULSE)
        # A retry is the same frame byte for byte in the same session, so the memory is
        # keyed by the session the host opened (SESSION), seq and the request's content:
        # a new session never gets an earlier session's replies, even on the same seq.
        # Only what changes the chip is exactly-once (pulses, clock advances); reads, time
        # and identity are executed every time: a stored reply would be stale.
        session = 0 if "shared-sessions" in c.violations else self.session_id
        key = (session, frame.seq, frame.opcode, zlib.crc32(frame.payload))
        once = frame.opcode in _EXACTLY_ONCE or "stale-reads" in c.violations
        with c.lock:
            reply = c.frame_replies.get(key) if once else None
            if reply is None:
                if f.draw("drop_request"):
                    return
                reply = self._execute(frame)
                if once:
                    c.frame_replies.put(key, reply)
            else:
                log.info("frame seq %d repeated: stored reply sent", frame.seq)
        if f.draw("drop_reply"):
            return
        if f.draw("delay_reply"):
            self._stop.wait(f.faults.delay_s)
        if f.draw("corrupt_reply"):
            reply = f.corrupt(reply)
        self._send(reply)

    def _execute(self, frame: Frame) -> bytes:
        c = self.controller
        seq, op, p = frame.seq, frame.opcode, frame.payload
        ack = op | framing.ACK_BIT
        try:
            if op == Opcode.IDENTIFY:
                return framing.encode(seq, ack, c.identity().encode())
            if op == Opcode.SIZE:
                return framing.encode(seq, ack, struct.pack("<II", *c.size()))
            if op == Opcode.LIMITS:
                return framing.encode(seq, ack, struct.pack("<4f", *c.limits()))
            if op == Opcode.PULSE:
                head = framing.PULSE_HEAD
                if len(p) < head.size or (len(p) - head.size) % RECORD.itemsize:
                    raise CommandError(BLOCK_DATA_ERROR, "Block data error; PULSE payload length")
                kind_code, width = head.unpack_from(p)
                if kind_code not in _KINDS:
                    raise CommandError(DATA_TYPE_ERROR, f"Data type error; kind code {kind_code}")
                rec = np.frombuffer(p, RECORD, offset=head.size)
                n = c.pulse(_KINDS[kind_code], width, rec["cell"], rec["amp"])
                return framing.encode(seq, ack, struct.pack("<I", n))
            if op == Opcode.READ:
                if len(p) % 4:
                    raise CommandError(BLOCK_DATA_ERROR, "Block data error; cells are uint32")
                g = c.read(np.frombuffer(p, "<u4"))
                return framing.encode(seq, ack, g.astype("<f4").tobytes())
            if op == Opcode.READ_ARRAY:
                return framing.encode(seq, ack, c.read(None).astype("<f4").tobytes())
            if op == Opcode.TIME:
                return framing.encode(seq, ack, struct.pack("<d", c.now()))
            if op == Opcode.SESSION:
                if len(p) != framing.SESSION_REQUEST.size:
                    raise CommandError(MISSING_PARAMETER,
                                       "Missing parameter; SESSION takes a u64 session id")
                (self.session_id,) = framing.SESSION_REQUEST.unpack(p)
                log.info("serial session %016x opened", self.session_id)
                return framing.encode(seq, ack, framing.SESSION_REPLY.pack(
                    framing.PROTOCOL_VERSION, self.session_id))
            if op == Opcode.MVM_CONFIG:
                spec = c.mvm_spec()
                return framing.encode(seq, ack, MVM_SPEC.pack(spec.dac_bits, spec.adc_bits,
                                                              spec.max_vectors))
            if op == Opcode.MVM:
                try:
                    request = decode_request(p)
                except MvmFormatError as exc:
                    raise CommandError(BLOCK_DATA_ERROR, f"Block data error; {exc}") from None
                codes = c.mvm(request)
                return framing.encode(seq, ack, np.ascontiguousarray(codes, CODE).tobytes())
            if op == Opcode.ADVANCE:
                if len(p) != 8:
                    raise CommandError(MISSING_PARAMETER,
                                       "Missing parameter; ADVANCE takes f64 seconds")
                c.advance(struct.unpack("<d", p)[0])
                return framing.encode(seq, ack)
            raise CommandError(UNDEFINED_HEADER, f"Undefined header; opcode 0x{op:02X}")
        except CommandError as exc:
            return framing.encode_nak(seq, exc.code, exc.message)
        except ValueError as exc:
            return framing.encode_nak(seq, DATA_OUT_OF_RANGE, str(exc))
