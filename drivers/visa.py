"""SCPI over VISA: text commands and IEEE 488.2 binary blocks (pyvisa, pyvisa-py default).

Every exchange runs under the connection's lock. A timeout, a dropped connection or a
garbled reply reconnects and retries a bounded number of times; a pulse batch is retried
with the same sequence number, so the chip applies it exactly once. A query the chip
refuses (empty reply) raises DeviceError with the chip's error queue entry and the command.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyvisa
import pyvisa.constants
import pyvisa.errors
import pyvisa.rname

from drivers.base import F32, RemoteDriverBase
from pcmlab.errors import DeviceError, PcmlabError, TransportError
from pcmlab.mvm import MvmFormatError, MvmRequest, MvmSpec, decode_reply, encode_request
from pcmlab.pulses import PulseKind
from pcmlab.scpi import DEFAULT, Dialect, load_dialect

log = logging.getLogger(__name__)
T = TypeVar("T")

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
        dialect: Dialect | str | Path | None = None,
    ) -> None:
        self.resource_name = resource
        # the controller's SCPI words (pcmlab.scpi): the default, or a dialect file
        self.dialect = dialect if isinstance(dialect, Dialect) else (
            DEFAULT if dialect is None else load_dialect(dialect))
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
        try:
            with self._lock:
                identity, rows, cols, lim, virtual = self._handshake(resource)
                mvm = self._probe_mvm()
        except BaseException as exc:
            # a failed open must not keep the connection: a one-connection controller
            # would serve nobody else
            self._close_quietly()
            if isinstance(exc, PcmlabError | KeyboardInterrupt):
                raise
            raise TransportError(f"{resource}: opening failed ({type(exc).__name__}: "
                                 f"{exc})") from None
        self._connected(identity, rows, cols, (lim[0], lim[1], lim[2], lim[3]), g_max_us,
                        virtual, mvm)
        log.info("connected to %s: %s (%d x %d, %s clock)", resource, identity, rows, cols,
                 "virtual" if virtual else "wall")

    def _handshake(self, resource: str) -> tuple[str, int, int, list[float], bool]:
        """Identity, shape, limits and the kind of clock, asked of the chip."""
        self._connect()
        d = self.dialect
        identity = self._query_fields("identify")["identity"]
        if len([f for f in identity.split(",") if f.strip()]) != 4 or not identity.isprintable():
            raise TransportError(f"{resource}: identity {identity!r} is not "
                                 "maker,model,serial,firmware")
        size = self._query_fields("size")
        rows, cols = int(size["rows"]), int(size["cols"])
        got = self._query_fields("limits")
        lim = [float(got[k]) for k in ("max_set_ua", "max_reset_ua", "min_width_ns",
                                       "max_width_ns")]
        no_clock = d.errors["undefined_header"]
        for attempt in range(self.retries + 1):  # a garbled error reply: probe again
            self._write(d["clear_errors"].message())
            self._write(d["advance"].message(dt_s=0.0))
            try:
                code, _ = self._pop_error()
                break
            except _GarbledReplyError as exc:
                if attempt == self.retries:
                    raise TransportError(f"{resource}: no valid reply while probing the "
                                         f"clock ({exc})") from None
        if code not in (d.errors["none"], no_clock):
            log.warning("%s: unexpected error %d after probing the clock", resource, code)
        return identity, rows, cols, lim, code != no_clock

    def _probe_mvm(self) -> MvmSpec | None:
        """The chip's MVM periphery, if its dialect has MVM and the chip answers it."""
        if not self.dialect.has("mvm_config"):
            return None
        try:
            got = self._query_fields("mvm_config")
        except DeviceError as exc:
            if exc.code == self.dialect.errors["undefined_header"]:
                return None  # a chip without MVM
            raise
        try:
            return MvmSpec(dac_bits=int(got["dac_bits"]), adc_bits=int(got["adc_bits"]),
                           max_vectors=int(got["max_vectors"]))
        except (ValueError, PcmlabError) as exc:
            raise TransportError(f"{self.resource_name}: MVM configuration {got} is not "
                                 f"valid ({exc})") from None

    def _mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:
        """One ``MVM?`` with its block, the ADC codes back as one block (a query: a lost
        reply is simply asked again, nothing on the chip changes)."""
        command = self.dialect["mvm"].message()
        payload = np.frombuffer(encode_request(request), np.uint8)
        n, outputs = request.inputs.shape[0], request.outputs

        def run() -> npt.NDArray[np.int16]:
            self._inst.write_binary_values(command, payload, datatype="B")
            raw, offset, length = self._block_reply(command)
            if raw is None:
                return np.zeros((0, outputs), np.int16)  # refused: the error queue says why
            try:
                return decode_reply(raw[offset:offset + length], n, outputs)
            except MvmFormatError as exc:
                raise _GarbledReplyError(str(exc)) from None

        with self._lock:
            codes = self._exchange(command, run)
            if codes.shape[0] == 0 and n:
                self._raise_device_error(command)
        return codes

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken session: nothing more to do
            if self._inst is not None:
                self._inst.close()
        self._inst = None
        if self._own_rm:
            with contextlib.suppress(Exception):
                self._rm.close()

    # -- connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        try:  # a malformed name is said as such, before pyvisa guesses at it
            pyvisa.rname.parse_resource_name(self.resource_name)
        except pyvisa.rname.InvalidResourceName as exc:
            raise TransportError(f"{self.resource_name}: not a valid VISA resource name: "
                                 f"{exc}") from None
        try:
            inst = self._rm.open_resource(self.resource_name)
        except Exception as exc:  # pyvisa-py raises bare Exception("could not connect")
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
                if isinstance(exc, ConnectionRefusedError) and getattr(self, "_info", None) is None:
                    # nothing listens there: retrying will not help, and says nothing new
                    raise TransportError(
                        f"{self.resource_name}: nothing is listening there (connection "
                        "refused); start the chip's server, or check the address and port"
                    ) from None
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

    def _query_fields(self, operation: str) -> dict[str, str]:
        """A text query of the dialect, its reply's fields (a garbled reply is retried)."""
        op = self.dialect[operation]
        command = op.message()

        def run() -> dict[str, str]:
            reply = self._inst.query(command).strip()
            fields = op.parse_reply(reply) if not reply.startswith("\x15") else None
            if fields is None and reply:
                raise _GarbledReplyError(f"reply {reply[:40]!r} to {command}")
            return fields or {}

        fields = self._exchange(command, run)
        if not fields:
            self._raise_device_error(command)
        return fields

    def _pop_error(self) -> tuple[int, str]:
        """The oldest queued error. A garbled reply is not asked again (the chip popped the
        entry already: a second ask would return the next one): it raises."""
        op = self.dialect["error"]
        command = op.message()
        reply = self._exchange(command, lambda: self._inst.query(command).strip())
        fields = None if reply.startswith("\x15") else op.parse_reply(reply)
        try:
            return int(fields["code"]), fields["message"]  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise _GarbledReplyError(f"{self.resource_name}: unexpected reply {reply!r} to "
                                     f"{command}") from None

    def _checked_error(self, command: str) -> tuple[int, str]:
        """The error a command left, or TransportError if its reply came garbled."""
        try:
            return self._pop_error()
        except _GarbledReplyError as exc:
            raise TransportError(f"{self.resource_name}: the error of "
                                 f"'{command.split(' ')[0]}' is unknown: {exc}") from None

    def _raise_device_error(self, command: str) -> None:
        code, message = self._checked_error(command)
        raise DeviceError(f"{self.resource_name}: '{command.split(' ')[0]}' failed: "
                          f"{code},\"{message}\"", command=command, code=code)

    # -- the CrossbarDriver interface ------------------------------------------------------
    def _now(self) -> float:
        with self._lock:
            try:
                return float(self._query_fields("time")["time_s"])
            except ValueError:
                raise TransportError(f"{self.resource_name}: the chip's time is not a "
                                     "number") from None

    def _advance(self, dt_s: float) -> None:
        with self._lock:
            command = self.dialect["advance"].message(dt_s=dt_s)
            self._write(command)
            code, message = self._checked_error(command)
            if code:
                raise DeviceError(f"{self.resource_name}: clock advance failed: {code},"
                                  f"\"{message}\"", command=command, code=code)

    def apply_pulses(self, cells: npt.ArrayLike, kind: PulseKind | str,
                     amplitude_ua: npt.ArrayLike, width_ns: float) -> int:
        kind, cell_arr, amp, width = self.check_pulses(cells, kind, amplitude_ua, width_ns)
        records = np.empty(cell_arr.size, dtype=self.dialect.record_dtype)
        records["cell"], records["amp"] = cell_arr, amp
        applied = 0
        with self._lock:
            for start in range(0, records.size, self.max_records):
                chunk = records[start:start + self.max_records]
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                applied += self._pulse_chunk(self._seq, kind, width, chunk)
        return applied

    def _pulse_chunk(self, seq: int, kind: PulseKind, width: float,
                     chunk: np.ndarray) -> int:
        op = self.dialect["pulse"]
        header = op.message(seq=seq, kind=self.dialect.kinds[kind.value], width_ns=width)

        def run() -> int:
            self._inst.write_binary_values(header, chunk.view(np.uint8), datatype="B")
            reply = self._inst.read().strip()
            fields = op.parse_reply(reply)
            try:
                if fields is None or int(fields["seq"]) != seq:
                    raise ValueError
                n = int(fields["applied"])
            except ValueError:
                raise _GarbledReplyError(f"reply {reply[:40]!r} to {op.header} seq {seq}"
                                         ) from None
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
                return self._read_block(self.dialect["read_array"].message(), None)
            cell_arr = self.check_cells(cells)
            command = self.dialect["read"].message()
            parts = [self._read_block(command, cell_arr[i:i + self.max_records])
                     for i in range(0, max(cell_arr.size, 1), self.max_records)]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _block_reply(self, command: str) -> tuple[bytes | None, int, int]:
        """A reply that is one IEEE 488.2 block: (the raw reply, the data's offset and
        length), or (None, 0, 0) for the empty line of a refused query."""
        raw = self._inst.read_raw()
        if raw in (b"\n", b"\r\n"):
            return None, 0, 0
        if not raw.startswith(b"#"):
            raise _GarbledReplyError(f"reply to {command.strip()} starts with {raw[:8]!r}")
        offset, length = pyvisa.util.parse_ieee_block_header(raw)
        missing = offset + length + 1 - len(raw)
        if missing > 0:  # binary: a 0x0A inside must not end each read
            with self._inst.read_termination_context(None):
                raw += self._inst.read_bytes(missing)
        return raw, offset, length

    def _read_block(self, command: str, cells: npt.NDArray[np.uint32] | None) -> F32:
        expected = self._info.n_cells if cells is None else cells.size

        def run() -> F32:
            if cells is None:
                self._inst.write(command)
            else:
                block = cells.astype(self.dialect.cell_dtype).view(np.uint8)
                self._inst.write_binary_values(command, block, datatype="B")
            raw, _, _ = self._block_reply(command)
            if raw is None:
                return np.zeros(0, np.float32)  # refused: the error queue says why
            d = self.dialect
            values = pyvisa.util.from_ieee_block(
                raw, d.conductance_dtype.char, d.byte_order == ">", np.array)
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
