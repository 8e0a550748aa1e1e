"""SCPI over VISA: text commands and IEEE 488.2 binary blocks (pyvisa, pyvisa-py default).

Every exchange runs under the connection's lock. A timeout, a dropped connection or a
garbled reply reconnects and retries a bounded number of times; a pulse batch is retried
with the same sequence number, so the chip applies it exactly once. A query the chip
refuses (empty reply) raises DeviceError with the chip's error queue entry and the command.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyvisa
import pyvisa.constants
import pyvisa.errors

from drivers.base import F32, RemoteDriverBase
from pcmlab.errors import DeviceError, TransportError
from pcmlab.pulses import PulseKind, pulse_records

log = logging.getLogger(__name__)
T = TypeVar("T")

# The wire vocabulary, in one place (DESIGN.md, "SCPI over VISA").
IDN = "*IDN?"
CLS = "*CLS"
ERR = "SYST:ERR?"
SIZE = "ARR:SIZE?"
LIMITS = "ARR:LIM?"
PULSE = "PULS? {seq},{kind},{width:.6g},"  # + block of (uint32 cell, float32 µA) records
READ = "READ? "  # + block of uint32 cells -> block of float32 µS
READ_ARRAY = "READ:ARR?"
TIME = "SYST:TIME?"
ADVANCE = "SYST:TIME:ADV {dt:.9g}"
NO_VIRTUAL_CLOCK = -113

_PULSE_REPLY = re.compile(r"^(\d+),(\d+)$")
_ERROR_REPLY = re.compile(r'^([+-]?\d+),"(.*)"$')


class _GarbledReplyError(Exception):
    """A reply that does not parse: treated like a lost one."""


class VisaDriver(RemoteDriverBase):
    """A chip controller that speaks the SCPI command set over any VISA resource."""

    def __init__(
        self,
        resource: str,
        *,
        backend: str = "@py",
        timeout_s: float = 10.0,
        retries: int = 3,
        max_records: int = 1 << 20,
        g_max_us: float = 25.0,
        chunk_bytes: int = 1 << 20,
        resource_manager: pyvisa.ResourceManager | None = None,
    ) -> None:
        self.resource_name = resource
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_records = max_records
        self.chunk_bytes = chunk_bytes
        self._lock = threading.RLock()
        self._own_rm = resource_manager is None
        try:
            self._rm = resource_manager or pyvisa.ResourceManager(backend)
        except (OSError, ValueError, pyvisa.errors.Error) as exc:
            raise TransportError(f"VISA backend '{backend}' is not available: {exc}") from None
        self._inst: Any = None
        self._seq = random.SystemRandom().randrange(1, 2**31)  # fresh per session
        with self._lock:
            self._connect()
            identity = self._exchange(IDN, lambda: self._inst.query(IDN).strip())
            rows, cols = (int(v) for v in self._query_text(SIZE).split(","))
            lim = [float(v) for v in self._query_text(LIMITS).split(",")]
            self._write(CLS)
            self._write(ADVANCE.format(dt=0.0))
            code, _ = self._pop_error()
            virtual = code != NO_VIRTUAL_CLOCK
            if code not in (0, NO_VIRTUAL_CLOCK):
                log.warning("%s: unexpected error %d after probing the clock", resource, code)
        self._connected(identity, rows, cols, (lim[0], lim[1], lim[2], lim[3]), g_max_us,
                        virtual)
        log.info("connected to %s: %s (%d x %d, %s clock)", resource, identity, rows, cols,
                 "virtual" if virtual else "wall")

    # -- connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            inst = self._rm.open_resource(self.resource_name)
        except (pyvisa.errors.VisaIOError, OSError, ValueError) as exc:
            raise TransportError(f"{self.resource_name}: cannot connect ({exc})") from None
        inst.timeout = int(self.timeout_s * 1000)
        inst.read_termination = "\n"
        inst.write_termination = "\n"
        inst.chunk_size = self.chunk_bytes
        self._inst = inst

    def _reconnect(self) -> None:
        try:
            if self._inst is not None:
                self._inst.close()
        except Exception:  # the old session is dead either way
            pass
        self._inst = None
        self._connect()

    def _exchange(self, command: str, fn: Callable[[], T]) -> T:
        """Run one exchange; on a transport failure reconnect and run it again."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if self._closed:
                raise TransportError(f"driver for {self.resource_name} is closed")
            try:
                if self._inst is None:
                    self._connect()
                return fn()
            except (pyvisa.errors.VisaIOError, OSError, _GarbledReplyError, ValueError,
                    pyvisa.errors.InvalidBinaryFormat) as exc:
                last = exc
                log.warning("%s: %s failed (%s), attempt %d of %d", self.resource_name,
                            command.split(" ")[0], exc, attempt + 1, self.retries + 1)
                try:
                    self._reconnect()
                except TransportError as again:
                    last = again
        raise TransportError(f"{self.resource_name}: no valid reply to "
                             f"'{command.split(' ')[0]}' after {self.retries + 1} attempts "
                             f"({last})")

    def _write(self, command: str) -> None:
        self._exchange(command, lambda: self._inst.write(command))

    def _query_text(self, command: str) -> str:
        def run() -> str:
            reply = self._inst.query(command).strip()
            if reply.startswith("\x15"):
                raise _GarbledReplyError(f"garbled reply {reply[:20]!r}")
            return reply

        reply = self._exchange(command, run)
        if not reply:
            self._raise_device_error(command)
        return reply

    def _pop_error(self) -> tuple[int, str]:
        reply = self._exchange(ERR, lambda: self._inst.query(ERR).strip())
        m = _ERROR_REPLY.match(reply)
        if not m:
            raise TransportError(f"{self.resource_name}: unexpected reply {reply!r} to {ERR}")
        return int(m.group(1)), m.group(2)

    def _raise_device_error(self, command: str) -> None:
        code, message = self._pop_error()
        raise DeviceError(f"{self.resource_name}: '{command.split(' ')[0]}' failed: "
                          f"{code},\"{message}\"", command=command, code=code)

    # -- the CrossbarDriver interface ------------------------------------------------------
    def _now(self) -> float:
        with self._lock:
            return float(self._query_text(TIME))

    def _advance(self, dt_s: float) -> None:
        with self._lock:
            self._write(ADVANCE.format(dt=dt_s))
            code, message = self._pop_error()
            if code:
                raise DeviceError(f"{self.resource_name}: clock advance failed: {code},"
                                  f"\"{message}\"", command=ADVANCE.format(dt=dt_s), code=code)

    def apply_pulses(self, cells: npt.ArrayLike, kind: PulseKind | str,
                     amplitude_ua: npt.ArrayLike, width_ns: float) -> int:
        kind, cell_arr, amp, width = self.check_pulses(cells, kind, amplitude_ua, width_ns)
        records = pulse_records(cell_arr, amp)
        applied = 0
        with self._lock:
            for start in range(0, records.size, self.max_records):
                chunk = records[start:start + self.max_records]
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                applied += self._pulse_chunk(self._seq, kind, width, chunk)
        return applied

    def _pulse_chunk(self, seq: int, kind: PulseKind, width: float,
                     chunk: np.ndarray) -> int:
        header = PULSE.format(seq=seq, kind=kind.value, width=width)

        def run() -> int:
            self._inst.write_binary_values(header, chunk.view(np.uint8), datatype="B")
            reply = self._inst.read().strip()
            m = _PULSE_REPLY.match(reply)
            if not m or int(m.group(1)) != seq:
                raise _GarbledReplyError(f"reply {reply[:40]!r} to PULS? seq {seq}")
            n = int(m.group(2))
            if n not in (0, chunk.size):
                raise _GarbledReplyError(f"PULS? seq {seq} reports {n} of {chunk.size} pulses")
            return n

        n = self._exchange(header, run)  # a retry reuses seq: applied at most once
        if n == 0 and chunk.size:
            self._raise_device_error(header)
        np.add.at(self.pulses_acknowledged, chunk["cell"], 1)
        return n

    def read(self, cells: npt.ArrayLike | None = None) -> F32:
        with self._lock:
            if cells is None:
                return self._read_block(READ_ARRAY, None)
            cell_arr = self.check_cells(cells)
            parts = [self._read_block(READ, cell_arr[i:i + self.max_records])
                     for i in range(0, max(cell_arr.size, 1), self.max_records)]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _read_block(self, command: str, cells: npt.NDArray[np.uint32] | None) -> F32:
        expected = self._info.n_cells if cells is None else cells.size

        def run() -> F32:
            if cells is None:
                self._inst.write(command)
            else:
                self._inst.write_binary_values(command, cells, datatype="I")
            raw = self._inst.read_raw()
            if raw in (b"\n", b"\r\n"):
                return np.zeros(0, np.float32)  # refused: the error queue says why
            if not raw.startswith(b"#"):
                raise _GarbledReplyError(f"reply to {command.strip()} starts with {raw[:8]!r}")
            offset, length = pyvisa.util.parse_ieee_block_header(raw)
            missing = offset + length + 1 - len(raw)
            if missing > 0:
                raw += self._inst.read_bytes(missing)
            values = pyvisa.util.from_ieee_block(raw, "f", False, np.array)
            if values.size != expected:
                raise _GarbledReplyError(f"{values.size} values for {expected} cells")
            return values.astype(np.float32, copy=False)

        out = self._exchange(command, run)
        if out.size == 0 and expected:
            self._raise_device_error(command)
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            super().close()
            try:
                if self._inst is not None:
                    self._inst.close()
            finally:
                if self._own_rm:
                    self._rm.close()
