"""The rules of ``pcmlab check``, one name each, and the result type of every check.

This table is the one home of the rule names: the driver-level suite
(``protocols.conformance``), the wire checks (``protocols.conformance_wire``), the
command's table and ``--json``, and the pytest plugin's items all take their names from it,
so a result can never be filed under a name the plugin does not look for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pcmlab.config import ChipLimits
from protocols.program_verify import ProgramVerifyConfig

Status = Literal["pass", "fail", "info", "skip"]

# rule name -> title (what the rule says), in the order the checks run
RULES: dict[str, str] = {
    "identity": "identity has the four IEEE 488.2 fields",
    "limits": "out-of-limit requests are refused before anything is applied",
    "all-or-nothing": "a batch with one bad record is refused whole",
    "duplicates": "a cell listed twice in one batch gets two pulses",
    "set-reset": "a SET raises and a RESET lowers the conductance",
    "read-agreement": "a read of the cells agrees with the full-array read",
    "clock": "the clock never goes backwards and advances by what was asked",
    "mvm-agreement": "the chip's matrix-vector products agree with its reads",
    "physics": "read noise, programmed spread and drift beside the calibrated model",
    "timing": "per-call cost against batch size",
    "wire-error-queue": "the error queue is oldest first and clears",
    "wire-limits": "the firmware refuses an out-of-range batch whole (-222)",
    "wire-exactly-once": "a pulse batch repeated with its seq is applied once, also on a "
                         "new connection",
    "wire-reads-fresh": "a read is executed every time, never answered from a memory",
    "wire-sessions": "a new session (SESSION) never gets an earlier session's replies",
    "wire-malformed": "a malformed message is refused and the chip keeps serving",
    "wire": "the chip's firmware on the raw wire",  # the skip when there is no wire
}

DRIVER_RULES: tuple[str, ...] = ("identity", "limits", "all-or-nothing", "duplicates",
                                 "set-reset", "read-agreement", "clock", "mvm-agreement",
                                 "physics", "timing")
# the wire rules per built-in protocol (the driver plugin's name: visa = SCPI, serial)
WIRE_RULES: dict[str, tuple[str, ...]] = {
    "visa": ("wire-error-queue", "wire-limits", "wire-exactly-once", "wire-reads-fresh",
             "wire-malformed"),
    "serial": ("wire-limits", "wire-exactly-once", "wire-reads-fresh", "wire-sessions",
               "wire-malformed"),
}


def rules_for(driver_kind: str | None) -> tuple[str, ...]:
    """Every rule checked on a chip opened by the driver plugin named ``driver_kind``."""
    return DRIVER_RULES + WIRE_RULES.get(driver_kind or "", ())


@dataclass(frozen=True)
class CheckResult:
    """One rule: ``status`` pass / fail (the contract is broken) / info (a figure) /
    skip (cannot be checked here, ``figure`` says why). ``rule`` is a name of ``RULES``."""

    rule: str
    title: str
    status: Status
    figure: str
    meaning: str

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"conformance result under the unknown rule name {self.rule!r}; "
                             f"the rules are {', '.join(RULES)}")


def raised(rule: str, exc: BaseException) -> CheckResult:
    """The result of a rule whose check raised: a failure of that rule."""
    return CheckResult(rule, RULES[rule], "fail", f"{type(exc).__name__}: {exc}",
                       "the driver or the chip raised where the contract has an answer")


def results_json(results: list[CheckResult], **extra: Any) -> str:
    """The results as JSON (``--json``), with ``extra`` fields (run id, chip, cells)."""
    return json.dumps({"results": [asdict(r) for r in results],
                       "failed": [r.rule for r in results if r.status == "fail"], **extra},
                      indent=2)


@dataclass(frozen=True)
class CheckConfig:
    """Pulse settings of the checks (defaults: from the program-and-verify defaults and
    the chip's limits)."""

    set_fraction: float = 0.45  # of the SET limit: a partial SET well above threshold
    set_width_ns: float = ProgramVerifyConfig().set_width_ns
    reset_width_ns: float = ProgramVerifyConfig().reset_width_ns
    level_us: float = 10.0  # for the programmed-spread figure

    def pulses(self, limits: ChipLimits) -> tuple[float, float, float, float]:
        """(SET µA, RESET µA, SET width ns, RESET width ns) within the chip's limits."""
        def width(w: float) -> float:
            return min(max(w, limits.min_width_ns), limits.max_width_ns)

        return (self.set_fraction * limits.max_set_ua, limits.max_reset_ua,
                width(self.set_width_ns), width(self.reset_width_ns))
