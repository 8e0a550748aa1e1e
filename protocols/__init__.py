"""Lab procedures written once against ``CrossbarDriver``."""

from protocols.interrupt import StopToken, deferred_sigint
from protocols.program_verify import (
    AmplitudeCurve,
    OvershootPolicy,
    ProgramProgress,
    ProgramResult,
    ProgramVerifyConfig,
    differential_targets,
    program_and_verify,
)

__all__ = [
    "AmplitudeCurve",
    "OvershootPolicy",
    "ProgramProgress",
    "ProgramResult",
    "ProgramVerifyConfig",
    "StopToken",
    "deferred_sigint",
    "differential_targets",
    "program_and_verify",
]
