"""Framed binary protocol of serial chip controllers (MCU / FPGA boards): one codec and
one opcode table for the device (mock chip server) and the host (``SerialDriver``).

Frame (protocol version 2), all integers little-endian::

    0xA5 | length u32 (payload bytes) | seq u16 | opcode u8 | header CRC-32 u32
         | payload | CRC-32 u32

The header CRC (zlib.crc32) covers length, seq and opcode: a 0xA5 in line noise is
rejected after 12 bytes instead of waiting for the payload it claims. The frame CRC
covers everything between 0xA5 and itself. The device answers every frame with the same
seq: an ACK (the request's opcode | 0x80) with the result, or a NAK (0xFF) with an error
code (int16) and a UTF-8 message. A receiver that loses sync discards bytes up to the next
0xA5 whose frame checks out. Payloads are those of the SCPI blocks.
"""

from __future__ import annotations

import enum
import logging
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

START = 0xA5
HEADER = struct.Struct("<IHB")  # length, seq, opcode
CRC = struct.Struct("<I")
MAX_PAYLOAD = 1 << 26  # 64 MiB, the SCPI block limit
HEAD = 1 + HEADER.size + CRC.size  # start byte, header, header CRC
OVERHEAD = HEAD + CRC.size
PROTOCOL_VERSION = 2
ACK_BIT = 0x80


log = logging.getLogger(__name__)


class Opcode(enum.IntEnum):
    """Requests; the request payload -> the ACK payload."""

    IDENTIFY = 0x01  # -> UTF-8 "maker,model,serial,firmware"
    SIZE = 0x02  # -> rows u32, cols u32
    LIMITS = 0x03  # -> max_set_ua, max_reset_ua, min_width_ns, max_width_ns (4 x f32)
    PULSE = 0x04  # kind u8 (0 SET, 1 RESET), width_ns f32, n x (cell u32, amp f32) -> n u32
    READ = 0x05  # n x cell u32 -> n x f32 µS
    READ_ARRAY = 0x06  # -> rows*cols x f32 µS, row-major
    TIME = 0x07  # -> seconds since the chip started, f64
    ADVANCE = 0x08  # dt_s f64 -> (empty); NAK -113 on chips without a virtual clock
    SESSION = 0x09  # session id u64 -> protocol version u16, session id u64
    MVM = 0x0A  # pcmlab.mvm request -> n x outputs int16 ADC codes (a query: never replayed)
    MVM_CONFIG = 0x0B  # -> dac_bits u32, adc_bits u32, max_vectors u32; NAK -113 without MVM
    NAK = 0xFF  # <- error code i16, UTF-8 message


PULSE_HEAD = struct.Struct("<Bf")
SESSION_REQUEST = struct.Struct("<Q")
SESSION_REPLY = struct.Struct("<HQ")
NAK_HEAD = struct.Struct("<h")
KIND_CODES = {"SET": 0, "RESET": 1}


@dataclass(frozen=True)
class Frame:
    seq: int
    opcode: int
    payload: bytes

    @property
    def is_nak(self) -> bool:
        return self.opcode == Opcode.NAK

    def nak(self) -> tuple[int, str]:
        code = NAK_HEAD.unpack_from(self.payload)[0]
        return code, self.payload[NAK_HEAD.size:].decode("utf-8", "replace")


def encode(seq: int, opcode: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    header = HEADER.pack(len(payload), seq & 0xFFFF, opcode)
    body = header + CRC.pack(zlib.crc32(header)) + payload
    return bytes([START]) + body + CRC.pack(zlib.crc32(body))


def encode_nak(seq: int, code: int, message: str) -> bytes:
    return encode(seq, Opcode.NAK, NAK_HEAD.pack(code) + message.encode("utf-8"))


class Decoder:
    """Incremental decoder: feed bytes, take whole frames; resynchronizes on bad CRC."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.max_payload = max_payload
        self.discarded = 0  # bytes thrown away while hunting for a frame

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self.discarded += len(self._buf)
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def skip_start(self) -> None:
        """Give up on the frame at the front (its claimed bytes stopped coming); the frames
        behind it, if any, come out of the next ``frames()``."""
        if self._buf:
            del self._buf[:1]
            self.discarded += 1

    def frames(self) -> list[Frame]:
        out = []
        while True:
            frame = self._next()
            if frame is None:
                return out
            out.append(frame)

    def _next(self) -> Frame | None:
        buf = self._buf
        while True:
            start = buf.find(START)
            if start < 0:
                self.discarded += len(buf)
                buf.clear()
                return None
            if start:
                self.discarded += start
                del buf[:start]
            if len(buf) < HEAD:
                return None
            length, seq, opcode = HEADER.unpack_from(buf, 1)
            (head_crc,) = CRC.unpack_from(buf, 1 + HEADER.size)
            if (length > self.max_payload
                    or zlib.crc32(buf[1:1 + HEADER.size]) != head_crc):
                del buf[:1]  # noise, not a frame of ours: hunt on at once
                self.discarded += 1
                continue
            total = OVERHEAD + length
            if len(buf) < total:
                return None
            (crc,) = CRC.unpack_from(buf, total - CRC.size)
            if zlib.crc32(buf[1:total - CRC.size]) != crc:
                del buf[:1]
                self.discarded += 1
                continue
            payload = bytes(buf[HEAD:total - CRC.size])
            del buf[:total]
            return Frame(seq, opcode, payload)


def await_reply(port: Any, decoder: Decoder, seq: int, deadline: float) -> Frame | None:
    """Read a pyserial ``port`` into ``decoder`` until the frame with ``seq`` arrives (other
    frames are stale: dropped) or ``deadline`` (time.monotonic) passes."""
    while time.monotonic() < deadline:
        data = port.read(max(1, port.in_waiting))
        if data:
            decoder.feed(data)
            for frame in decoder.frames():
                if frame.seq == seq:
                    return frame
                log.debug("stale frame seq %d ignored", frame.seq)
    return None
