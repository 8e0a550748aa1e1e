"""The mock chip's controller firmware: what a command does, whatever the wire.

Both servers (SCPI over TCP, framed binary over a pseudo-terminal) call it. It holds the
SCPI error queue and the replay memories that make pulses exactly-once, shared by every
connection (DESIGN.md, "Wire protocols").
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable

import numpy as np
import numpy.typing as npt

from mock_chip.chip import MockChip
from pcmlab.errors import ConfigError
from pcmlab.mvm import MvmRequest, MvmSpec
from pcmlab.pulses import PulseKind, check_cells
from pcmlab.scpi import DEFAULT

# SCPI error codes (IEEE 488.2 / SCPI-99), from their one home: the default dialect
_E = DEFAULT.errors
NO_ERROR = _E["none"]
DATA_TYPE_ERROR = _E["data_type"]
MISSING_PARAMETER = _E["missing_parameter"]
UNDEFINED_HEADER = _E["undefined_header"]
BLOCK_DATA_ERROR = _E["block_data"]
DATA_OUT_OF_RANGE = _E["data_out_of_range"]
TOO_MUCH_DATA = _E["too_much_data"]
QUEUE_OVERFLOW = _E["queue_overflow"]

QUEUE_DEPTH = 32
REPLAY_DEPTH = 1024

# Contract rules the mock can be told to break, so that 'pcmlab check' can be shown to
# catch a chip that breaks them (mock-server --break RULE). Never on by default.
VIOLATIONS = {
    "replay": "no replay memory: a repeated pulse batch is applied again",
    "error-order": "the error queue answers newest first",
    "limits": "out-of-range amplitudes are clipped to the limit and applied",
    "all-or-nothing": "a batch with a bad record applies its good records",
    "stale-reads": "a repeated read is answered from memory (serial: the replay memory; "
                   "SCPI: the last reply to the same READ? block)",
    "shared-sessions": "serial: the replay memory ignores the session id",
    "silent-malformed": "SCPI: a malformed block is dropped without an error",
    "mvm-sign": "MVM: column pairs taken the wrong way round (G- minus G+)",
}


class CommandError(Exception):
    """A command failed with an SCPI error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ErrorQueue:
    """SCPI error queue: oldest first, 32 deep, the newest entry becomes -350 on overflow."""

    def __init__(self, depth: int = QUEUE_DEPTH, *, newest_first: bool = False) -> None:
        self._q: collections.deque[tuple[int, str]] = collections.deque()
        self.depth = depth
        self.newest_first = newest_first  # a contract violation, for conformance tests

    def push(self, code: int, message: str) -> None:
        if len(self._q) >= self.depth:
            self._q[-1] = (QUEUE_OVERFLOW, "Queue overflow")
            return
        self._q.append((code, message))

    def pop(self) -> tuple[int, str]:
        if not self._q:
            return NO_ERROR, "No error"
        return self._q.pop() if self.newest_first else self._q.popleft()

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


class ReplayMemory:
    """The last ``depth`` replies by key (a sequence number, or one with the request's
    content), oldest evicted first."""

    def __init__(self, depth: int = REPLAY_DEPTH) -> None:
        self._d: collections.OrderedDict[Hashable, bytes] = collections.OrderedDict()
        self.depth = depth

    def get(self, key: Hashable) -> bytes | None:
        return self._d.get(key)

    def put(self, key: Hashable, reply: bytes) -> None:
        self._d[key] = reply
        self._d.move_to_end(key)
        while len(self._d) > self.depth:
            self._d.popitem(last=False)


class Controller:
    """Commands on one mock chip, safe to call from several threads."""

    def __init__(self, chip: MockChip, *, virtual_clock: bool = True,
                 violations: frozenset[str] = frozenset()) -> None:
        unknown = sorted(set(violations) - set(VIOLATIONS))
        if unknown:
            raise ConfigError(f"unknown contract violation(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(VIOLATIONS))}")
        self.chip = chip
        self.virtual_clock = virtual_clock
        self.violations = frozenset(violations)
        self.lock = threading.RLock()
        self.errors = ErrorQueue(newest_first="error-order" in violations)
        depth = 0 if "replay" in violations else REPLAY_DEPTH
        self.scpi_replies = ReplayMemory(depth)
        self.frame_replies = ReplayMemory(depth)

    # -- identity and limits ---------------------------------------------------------------
    def identity(self) -> str:
        return self.chip.identity

    def size(self) -> tuple[int, int]:
        g = self.chip.geometry
        return g.rows, g.cols

    def limits(self) -> tuple[float, float, float, float]:
        lim = self.chip.limits
        return lim.max_set_ua, lim.max_reset_ua, lim.min_width_ns, lim.max_width_ns

    # -- controller state ------------------------------------------------------------------
    def reset(self) -> None:
        """*RST: controller state only; cells, clock and replay memory stay."""
        with self.lock:
            self.errors.clear()

    # -- time ------------------------------------------------------------------------------
    def now(self) -> float:
        return self.chip.clock.now()

    def advance(self, dt_s: float) -> None:
        if not self.virtual_clock:
            raise CommandError(UNDEFINED_HEADER, "Undefined header; this chip has no "
                               "virtual clock")
        if not np.isfinite(dt_s) or dt_s < 0:
            raise CommandError(DATA_OUT_OF_RANGE, f"Data out of range; advance {dt_s} s")
        with self.lock:
            self.chip.clock.advance(dt_s)

    # -- cells -----------------------------------------------------------------------------
    def pulse(self, kind: str, width_ns: float, cells: npt.NDArray[np.uint32],
              amplitude_ua: npt.NDArray[np.float32]) -> int:
        """All or nothing: any record out of range refuses the whole batch (-222)."""
        try:
            kind_ = PulseKind.parse(kind)
        except ConfigError:
            raise CommandError(DATA_TYPE_ERROR, f"Data type error; kind '{kind}'") from None
        with self.lock:
            if self.violations & {"limits", "all-or-nothing"}:
                return self._pulse_breaking_the_contract(kind_, width_ns, cells, amplitude_ua)
            try:
                return self.chip.apply_pulses(cells, kind_, amplitude_ua, width_ns)
            except ConfigError as exc:
                raise CommandError(DATA_OUT_OF_RANGE, f"Data out of range; {exc}") from None

    def _pulse_breaking_the_contract(self, kind: PulseKind, width_ns: float,
                                     cells: npt.NDArray[np.uint32],
                                     amplitude_ua: npt.NDArray[np.float32]) -> int:
        limit = (self.chip.limits.max_set_ua if kind is PulseKind.SET
                 else self.chip.limits.max_reset_ua)
        amps = np.asarray(amplitude_ua, dtype=np.float32)
        bad = ~np.isfinite(amps) | (amps < 0) | (amps > limit) | (cells >= self.chip.n_cells)
        if "limits" in self.violations:  # clip what is too strong, apply everything
            amps = np.where(amps > limit, np.float32(limit), amps)
            bad = ~np.isfinite(amps) | (amps < 0) | (cells >= self.chip.n_cells)
        good = ~bad
        if good.any():
            self.chip.apply_pulses(cells[good], kind, amps[good], width_ns)
        if bad.any():
            raise CommandError(DATA_OUT_OF_RANGE, f"Data out of range; {int(bad.sum())} "
                               "record(s)")
        return int(cells.size)

    def read(self, cells: npt.NDArray[np.uint32] | None) -> npt.NDArray[np.float32]:
        with self.lock:
            if cells is None:
                return self.chip.read()
            try:
                check_cells(cells, self.chip.n_cells)
            except ConfigError as exc:
                raise CommandError(DATA_OUT_OF_RANGE, f"Data out of range; {exc}") from None
            return self.chip.read(cells)

    # -- matrix-vector multiplication ------------------------------------------------------
    def mvm_spec(self) -> MvmSpec:
        unit = self.chip.mvm_unit
        if unit is None:
            raise CommandError(UNDEFINED_HEADER, "Undefined header; this chip has no MVM")
        return unit.config.spec()

    def mvm(self, request: MvmRequest) -> npt.NDArray[np.int16]:
        """ADC codes of an in-array MVM; -222 for a request out of range, -113 on a chip
        without the capability. Nothing changes on the chip either way."""
        self.mvm_spec()
        with self.lock:
            try:
                codes = self.chip.mvm(request)
                return -codes if "mvm-sign" in self.violations else codes
            except ValueError as exc:
                raise CommandError(DATA_OUT_OF_RANGE, f"Data out of range; {exc}") from None
