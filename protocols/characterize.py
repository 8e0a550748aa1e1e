"""Characterize a chip: program level sets, read them repeatedly right after programming
(read noise), then on a log-spaced schedule (drift), all into one measurement file that
``pcmlab fit`` turns into a calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from drivers.base import CrossbarDriver
from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError
from protocols.experiment import measure_into_file
from protocols.interrupt import StopToken
from protocols.program_verify import ProgramResult, ProgramVerifyConfig, ProgressCallback
from protocols.readout import WaitCallback


class CharacterizeConfig(StrictModel):
    """Level sets, the read-noise burst and the drift schedule (times after programming)."""

    levels_us: tuple[float, ...] = tuple(np.linspace(0.0, 25.0, 11).round(6))
    cells_per_level: int = Field(1000, ge=1)
    burst_reads: int = Field(10, ge=2, description="repeated reads right after t0")
    burst_spacing_s: float = Field(2.0, gt=0, description="between the repeated reads")
    t0_s: float = Field(20.0, gt=0, description="the first read after programming")
    t_end_s: float = Field(1e6, gt=0, description="the last drift read")
    drift_reads: int = Field(12, ge=3)
    program: ProgramVerifyConfig = ProgramVerifyConfig()

    @model_validator(mode="after")
    def _consistent(self) -> CharacterizeConfig:
        if not self.levels_us:
            raise ValueError("levels_us is empty: give the conductance levels to program")
        burst_end = self.t0_s + (self.burst_reads - 1) * self.burst_spacing_s
        if self.t_end_s <= burst_end:
            raise ValueError(f"t_end_s={self.t_end_s} must be after the read-noise burst, "
                             f"which ends at {burst_end} s")
        return self

    def burst_times_s(self) -> npt.NDArray[np.float64]:
        return self.t0_s + self.burst_spacing_s * np.arange(self.burst_reads)

    def times_s(self) -> npt.NDArray[np.float64]:
        """The burst, then drift reads log-spaced from the burst's end to t_end."""
        burst = self.burst_times_s()
        drift = np.geomspace(burst[-1], self.t_end_s, self.drift_reads + 1)[1:]
        return np.concatenate([burst, drift])


def characterize(
    driver: CrossbarDriver, path: str | Path, config: CharacterizeConfig | None = None, *,
    overwrite: bool = False, program_progress: ProgressCallback | None = None,
    on_wait: WaitCallback | None = None, stop: StopToken | None = None,
    record: dict[str, Any] | None = None,
) -> tuple[ProgramResult, int]:
    """Program every level on ``cells_per_level`` cells (level after level, from cell 0),
    then read: the burst, then the drift schedule. ``record``: more settings to keep in
    the file's configuration (e.g. the resource and the mock chip's settings)."""
    cfg = config or CharacterizeConfig()
    n = len(cfg.levels_us) * cfg.cells_per_level
    if n > driver.info.n_cells:
        raise ConfigError(f"{len(cfg.levels_us)} levels x {cfg.cells_per_level} cells = {n} "
                          f"cells, more than the chip's {driver.info.n_cells}")
    if max(cfg.levels_us) > driver.info.g_max_us or min(cfg.levels_us) < 0:
        raise ConfigError(f"levels must lie in 0..{driver.info.g_max_us} µS, got "
                          f"{min(cfg.levels_us)}..{max(cfg.levels_us)}")
    cells = np.arange(n, dtype=np.uint32)
    target = np.repeat(np.asarray(cfg.levels_us, dtype=np.float32), cfg.cells_per_level)
    return measure_into_file(driver, path, cells=cells, target_us=target, program=cfg.program,
                       times_s=cfg.times_s(),
                       config={**(record or {}), "characterize": cfg.model_dump(mode="json")},
                       overwrite=overwrite, program_progress=program_progress,
                       on_wait=on_wait, stop=stop, kind="characterization")
