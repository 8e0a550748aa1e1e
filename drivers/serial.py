"""The framed binary protocol over a serial port (any pyserial port path or URL).

Framing and opcodes live in ``pcmlab.framing``; this module only moves frames. A frame
that gets no valid reply in time (lost, corrupted: CRC) is sent again with the same
sequence number, a bounded number of times; the device answers a repeated sequence
number from its memory without running the command again.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time

import numpy as np
import numpy.typing as npt
import serial

from drivers.base import F32, RemoteDriverBase
from pcmlab import framing
from pcmlab.errors import DeviceError, TransportError
from pcmlab.framing import Opcode
from pcmlab.mvm import MVM_SPEC, MvmFormatError, MvmRequest, MvmSpec, decode_reply, encode_request
from pcmlab.pulses import PulseKind, pulse_records
from pcmlab.scpi import DEFAULT

log = logging.getLogger(__name__)

class SerialDriver(RemoteDriverBase):
    """A chip controller board on a serial line."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115_200,
        timeout_s: float = 1.0,
        retries: int = 5,
        max_records: int = 1 << 16,
        bytes_per_s: float | None = None,
        g_max_us: float = 25.0,
    ) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_records = max_records
        # how long a long reply may take to arrive: the line rate (10 bits per byte)
        self.bytes_per_s = bytes_per_s or baudrate / 10
        self._lock = threading.RLock()
        self._decoder = framing.Decoder()
        self._seq = random.SystemRandom().randrange(0, 1 << 16)
        self.retransmissions = 0
        try:
            self._ser = serial.serial_for_url(port, baudrate=baudrate, timeout=0.05,
                                              write_timeout=max(timeout_s, 1.0))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"{port}: cannot open serial port ({exc})") from None
        try:
            self._open_session()
            identity = self._transact(Opcode.IDENTIFY).decode("utf-8", "replace")
            rows, cols = struct.unpack("<II", self._transact(Opcode.SIZE))
            lim = struct.unpack("<4f", self._transact(Opcode.LIMITS))
            try:
                self._transact(Opcode.ADVANCE, struct.pack("<d", 0.0))
                virtual = True
            except DeviceError as exc:
                if exc.code != DEFAULT.errors["undefined_header"]:  # no virtual clock
                    raise
                virtual = False
            mvm = self._probe_mvm()
        except BaseException:
            self._ser.close()
            raise
        self._connected(identity, rows, cols, lim, g_max_us, virtual, mvm)
        log.info("connected to %s: %s (%d x %d)", port, identity, rows, cols)

    def _open_session(self) -> None:
        """Tell the device this is a new session, so that its replay memory never answers
        this session with an earlier one's replies (the session id is part of its key)."""
        self.session_id = random.SystemRandom().randrange(1, 1 << 64)
        reply = self._transact(Opcode.SESSION, framing.SESSION_REQUEST.pack(self.session_id))
        version, echoed = (framing.SESSION_REPLY.unpack(reply)
                           if len(reply) == framing.SESSION_REPLY.size else (None, None))
        if echoed != self.session_id:
            raise TransportError(f"{self.port}: SESSION answered {reply!r}, not the "
                                 f"session id {self.session_id:016x}")
        self.protocol_version = version

    def _probe_mvm(self) -> MvmSpec | None:
        try:
            reply = self._transact(Opcode.MVM_CONFIG)
        except DeviceError as exc:
            if exc.code == DEFAULT.errors["undefined_header"]:
                return None  # a board without MVM
            raise
        if len(reply) != MVM_SPEC.size:
            raise TransportError(f"{self.port}: MVM_CONFIG answered {len(reply)} bytes")
        dac, adc, most = MVM_SPEC.unpack(reply)
        return MvmSpec(dac_bits=dac, adc_bits=adc, max_vectors=most)

    def _mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:
        """One MVM frame; the reply frame carries the codes. A query: a lost reply is
        asked again with the same seq and executed again (nothing on the chip changes)."""
        n, outputs = request.inputs.shape[0], request.outputs
        raw = self._transact(Opcode.MVM, encode_request(request), 2 * n * outputs)
        try:
            return decode_reply(raw, n, outputs)
        except MvmFormatError as exc:
            raise TransportError(f"{self.port}: {exc}") from None

    # -- frames ----------------------------------------------------------------------------
    def _transact(self, opcode: Opcode, payload: bytes = b"", reply_bytes: int = 0) -> bytes:
        """Send a frame and return its ACK payload; retries with the same seq."""
        with self._lock:
            if self._closed:
                raise TransportError(f"driver for {self.port} is closed")
            self._seq = (self._seq + 1) & 0xFFFF
            seq = self._seq
            frame = framing.encode(seq, opcode, payload)
            wait_s = self.timeout_s + (len(frame) + reply_bytes) / self.bytes_per_s
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retransmissions += 1
                    log.warning("%s: no valid reply to %s (seq %d), resending (%d of %d)",
                                self.port, opcode.name, seq, attempt, self.retries)
                    self._decoder.clear()  # whatever half frame is there is garbage
                try:
                    self._ser.write(frame)
                    self._ser.flush()
                    reply = self._await(seq, time.monotonic() + wait_s)
                except (serial.SerialException, OSError) as exc:
                    raise TransportError(f"{self.port}: serial link failed during "
                                         f"{opcode.name} ({exc})") from None
                if reply is None:
                    continue
                if reply.is_nak:
                    code, message = reply.nak()
                    raise DeviceError(f"{self.port}: {opcode.name} failed: {code},"
                                      f"\"{message}\"", command=opcode.name, code=code)
                if reply.opcode != opcode | framing.ACK_BIT:
                    continue
                return reply.payload
        raise TransportError(f"{self.port}: no valid reply to {opcode.name} (seq {seq}) "
                             f"after {self.retries + 1} attempts of {wait_s:.2f} s")

    def _await(self, seq: int, deadline: float) -> framing.Frame | None:
        return framing.await_reply(self._ser, self._decoder, seq, deadline)

    # -- the CrossbarDriver interface ------------------------------------------------------
    def _now(self) -> float:
        return struct.unpack("<d", self._transact(Opcode.TIME))[0]

    def _advance(self, dt_s: float) -> None:
        self._transact(Opcode.ADVANCE, struct.pack("<d", dt_s))

    def apply_pulses(self, cells: npt.ArrayLike, kind: PulseKind | str,
                     amplitude_ua: npt.ArrayLike, width_ns: float) -> int:
        kind, cell_arr, amp, width = self.check_pulses(cells, kind, amplitude_ua, width_ns)
        records = pulse_records(cell_arr, amp)
        head = framing.PULSE_HEAD.pack(framing.KIND_CODES[kind.value], width)
        applied = 0
        with self._lock:
            for start in range(0, records.size, self.max_records):
                chunk = records[start:start + self.max_records]
                reply = self._transact(Opcode.PULSE, head + chunk.tobytes(), 4)
                n = struct.unpack("<I", reply)[0] if len(reply) == 4 else None
                if n != chunk.size:
                    raise TransportError(f"{self.port}: PULSE of {chunk.size} records "
                                         f"acknowledged {n if n is not None else reply!r} "
                                         "pulses; the chip and the driver disagree on what "
                                         "was applied")
                np.add.at(self.pulses_acknowledged, chunk["cell"], 1)
                applied += n
        return applied

    def read(self, cells: npt.ArrayLike | None = None) -> F32:
        with self._lock:
            if cells is None:
                raw = self._transact(Opcode.READ_ARRAY, b"", 4 * self._info.n_cells)
                return self._values(raw, self._info.n_cells, "READ_ARRAY")
            cell_arr = self.check_cells(cells)
            parts = []
            for i in range(0, cell_arr.size, self.max_records):
                chunk = cell_arr[i:i + self.max_records].astype("<u4")
                raw = self._transact(Opcode.READ, chunk.tobytes(), 4 * chunk.size)
                parts.append(self._values(raw, chunk.size, "READ"))
            return (np.concatenate(parts).astype(np.float32) if parts
                    else np.zeros(0, np.float32))

    def _values(self, raw: bytes, n: int, what: str) -> F32:
        """n float32 conductances, or TransportError: a short reply is never returned."""
        if len(raw) != 4 * n:
            raise TransportError(f"{self.port}: {what} of {n} cells answered {len(raw)} "
                                 f"bytes, not {4 * n}")
        return np.frombuffer(raw, "<f4").astype(np.float32)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                super().close()
                self._ser.close()
