"""A whole run: program targets, then read them on a schedule into a measurement file;
and resuming a run that stopped."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from drivers.base import ChipInfo, CrossbarDriver
from pcmlab.config import StrictModel, validate_model
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.store import RunReader, RunWriter
from protocols.interrupt import StopToken
from protocols.program_verify import (
    ProgramResult,
    ProgramVerifyConfig,
    ProgressCallback,
    check_target_unit,
    check_targets,
    program_and_verify,
    program_pairs,
)
from protocols.readout import ReadoutSchedule, WaitCallback, run_schedule

log = logging.getLogger(__name__)

DEFAULT_LEVELS_US = (0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 22.5)


class TargetSpec(StrictModel):
    """Which cells to program to what: levels in turn, uniform random, or a .npy file.
    ("array" is what a file records when a Python script passed the targets as arrays.)"""

    kind: Literal["levels", "uniform", "file", "array"] = Field(
        "levels", description="'levels': cells take levels_us in turn; 'uniform': random "
        "0..G_max; 'file': a .npy")
    levels_us: tuple[float, ...] = Field(DEFAULT_LEVELS_US, description="target levels, µS "
                                         "(kind = 'levels')")
    cells: int | None = Field(None, ge=1, description="cells 0..N-1 (default: the array)")
    file: str | None = Field(None, description=".npy of µS, 1-D or rows x cols, NaN = skip")
    seed: int = Field(0, ge=0, description="seed of the uniform targets")

    @model_validator(mode="after")
    def _file_given(self) -> TargetSpec:
        if self.kind == "file" and not self.file:
            raise ValueError("kind = 'file' needs file = 'targets.npy'")
        if self.kind == "levels" and not self.levels_us:
            raise ValueError("kind = 'levels' needs at least one level in levels_us")
        return self

    def resolve(self, info: ChipInfo, base: Path | None = None
                ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
        """(cells, targets in µS) for this chip."""
        if self.kind == "array":
            raise ConfigError("targets.kind = 'array' records targets a script passed as "
                              "arrays; a configuration gives levels, uniform or a .npy file")
        if self.kind == "file":
            path = Path(self.file or "")
            if base is not None and not path.is_absolute():
                path = base / path
            return load_targets_file(path, info)
        n = info.n_cells if self.cells is None else self.cells
        if n > info.n_cells:
            raise ConfigError(f"targets.cells = {n} but the array has {info.n_cells} cells")
        cells = np.arange(n, dtype=np.uint32)
        if self.kind == "levels":
            levels = np.asarray(self.levels_us, dtype=np.float32)
            bad = [float(v) for v in levels if not 0 <= v <= info.g_max_us]
            if bad:
                raise ConfigError(f"targets.levels_us: {', '.join(f'{v:g}' for v in bad)} "
                                  f"µS outside the chip's range 0..{info.g_max_us:g} µS")
            return cells, levels[np.arange(n) % levels.size]
        rng = np.random.default_rng(self.seed)
        return cells, rng.uniform(0, info.g_max_us, n).astype(np.float32)


def load_targets_file(path: Path, info: ChipInfo
                      ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    """Targets in µS from a .npy: 1-D (cells 0..N-1) or rows x cols; NaN leaves a cell alone."""
    geometry = info.geometry
    if not path.is_file():
        raise ConfigError(f"{path}: no such targets file (expected a .npy array of µS)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError):
        raise ConfigError(f"{path}: not a numpy .npy array (write targets with numpy.save; "
                          "object arrays are refused)") from None
    if arr.ndim == 2:
        if arr.shape != (geometry.rows, geometry.cols):
            raise ConfigError(f"{path}: 2-D targets must match the array, "
                              f"{geometry.rows} x {geometry.cols}; got {arr.shape[0]} x "
                              f"{arr.shape[1]}")
        arr = arr.reshape(-1)
    elif arr.ndim != 1:
        raise ConfigError(f"{path}: targets must be 1-D (cells 0..N-1) or rows x cols, "
                          f"got {arr.ndim}-D")
    if arr.size > info.n_cells:
        raise ConfigError(f"{path}: {arr.size} targets for an array of {info.n_cells} cells")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ConfigError(f"{path}: targets must be real numbers (µS), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    inf = np.flatnonzero(np.isinf(arr))
    if inf.size:
        raise ConfigError(f"{path}: {inf.size} infinite target(s), the first at cell "
                          f"{int(inf[0])}; give µS values (NaN leaves a cell alone)")
    cells = np.flatnonzero(~np.isnan(arr)).astype(np.uint32)
    if cells.size == 0:
        raise ConfigError(f"{path}: no target to program ({arr.size} values"
                          f"{', all NaN' if arr.size else ''})")
    return cells, arr[cells].astype(np.float32)


class RunConfig(StrictModel):
    """A run, as written in a TOML file for ``pcmlab run``."""

    resource: str = Field("mock", description="'mock' (in-process mock chip) or a resource")
    dialect: str | None = Field(None, description="SCPI dialect file of the chip at "
                                "'resource' (relative to this file); default pcmlab's")
    chip: dict[str, Any] = Field(default_factory=dict,
                                 description="mock chip settings (MockChipConfig)")
    targets: TargetSpec = Field(TargetSpec(), description="which cells, programmed to what")
    program: ProgramVerifyConfig = Field(ProgramVerifyConfig(),
                                         description="program-and-verify settings")
    schedule: ReadoutSchedule = Field(ReadoutSchedule(), description="when to read, after "
                                      "the end of programming")


class RunOutcome(NamedTuple):
    """What ``measure_run`` did: the programming result and how many readouts it took
    (fewer than planned if it was stopped). Unpacks as ``result, taken``."""

    programming: ProgramResult
    readouts_taken: int


def _read_cells(info: ChipInfo, cells: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32] | None:
    """None (read the whole array in one call) when the run covers it in order."""
    if cells.size == info.n_cells and np.array_equal(cells, np.arange(info.n_cells)):
        return None
    return cells


def measure_into_file(
    driver: CrossbarDriver,
    path: str | Path,
    *,
    cells: npt.NDArray[np.uint32],
    target_us: npt.NDArray[np.float32],
    program: ProgramVerifyConfig,
    times_s: npt.NDArray[np.float64],
    config: dict[str, Any],
    layer: npt.NDArray[np.int16] | None = None,
    network_mapping: str | None = None,
    pairs: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]] | None = None,
    overwrite: bool = False,
    program_progress: ProgressCallback | None = None,
    on_wait: WaitCallback | None = None,
    stop: StopToken | None = None,
    after_readout: Callable[[int, float], None] | None = None,
    kind: str = "run",
) -> RunOutcome:
    """The lower level of ``measure_run`` (deployments use it): program ``cells`` to
    ``target_us``, then read them at ``times_s`` after programming, everything into a new
    measurement file whose ``config`` attribute records ``config``. With ``pairs``
    (positions of G+ and G- in ``cells``), pairs with a stuck device are compensated
    (``program_pairs``) and the file's targets are the ones finally programmed.
    ``after_readout(i, time_s)`` runs after readout i is in the file (e.g. chip-mode
    inference at that moment). ``kind`` (run, deployment, characterization) is what the
    file and the catalog record."""
    info = driver.info
    program.check_against(info)
    check_targets(info, cells, target_us)  # before the file exists: nothing half-made
    check_target_unit(info, target_us, program)
    stop = stop or StopToken()
    writer = RunWriter.create(
        path, config=config, driver_identity=info.identity, cells=cells, target_us=target_us,
        layer=layer, schedule_time_s=times_s, network_mapping=network_mapping,
        overwrite=overwrite, geometry={"rows": info.geometry.rows, "cols": info.geometry.cols,
                                       "arrays": info.arrays}, kind=kind,
        trace_iterations=program.max_iterations if program.record_traces else 0)
    with writer:
        if pairs is None:
            result = program_and_verify(driver, cells, target_us, program,
                                        progress=program_progress, stop=stop,
                                        pulses=writer.record_pulses)
        else:
            result = program_pairs(driver, cells, target_us, pairs[0], pairs[1], program,
                                   progress=program_progress, stop=stop,
                                   pulses=writer.record_pulses)
            writer.update_targets(result.target_us)
        writer.write_programming(
            conductance_us=result.g_us, iterations=result.iterations,
            converged=result.converged, last_pulse_s=result.last_pulse_s,
            end_chip_time_s=result.end_s, interrupted=result.interrupted,
            traces=result.traces or None, set_pulses=result.set_pulses,
            reset_pulses=result.reset_pulses)
        if result.interrupted:
            log.warning("programming interrupted: no readouts taken")
            return RunOutcome(result, 0)
        taken = run_schedule(driver, times_s, result.end_s, _sink(writer, after_readout),
                             cells=_read_cells(info, cells), stop=stop, on_wait=on_wait)
    return RunOutcome(result, taken)


def measure_run(
    driver: CrossbarDriver,
    config: RunConfig | Mapping[str, Any],
    path: str | Path,
    *,
    cells: npt.ArrayLike | None = None,
    target_us: npt.ArrayLike | None = None,
    config_dir: Path | None = None,
    overwrite: bool = False,
    program_progress: ProgressCallback | None = None,
    on_wait: WaitCallback | None = None,
    stop: StopToken | None = None,
) -> RunOutcome:
    """A whole run into a new measurement file at ``path``: program the targets with
    program-and-verify, then read them at the schedule's times after programming.

    ``config`` is a ``RunConfig`` (what ``pcmlab run`` loads a TOML file into; a dict is
    validated into one, with the command line's messages). Its ``targets`` say what to
    program, unless ``cells`` and ``target_us`` (µS) are given as arrays. Everything is
    checked against the chip before the file exists. ``config_dir`` resolves a relative
    targets file. Returns ``RunOutcome(programming, readouts_taken)``.
    """
    if not isinstance(config, RunConfig):
        config = validate_model(RunConfig, dict(config), "run configuration")
    config = _as_run_on(config, driver)
    info = driver.info
    config.program.check_against(info)
    if (cells is None) != (target_us is None):
        raise ConfigError("give both cells and target_us, or neither (then the "
                          "configuration's targets are programmed)")
    if cells is None:
        cell_arr, target = config.targets.resolve(info, config_dir)
    else:
        cell_arr = np.asarray(cells)
        target = np.asarray(target_us)
        if not np.issubdtype(cell_arr.dtype, np.integer) or cell_arr.ndim != 1:
            raise ConfigError(f"cells must be a 1-D array of integer cell indices, got "
                              f"{cell_arr.dtype} of shape {cell_arr.shape}")
        if target.shape != cell_arr.shape:
            raise ConfigError(f"target_us has shape {target.shape}; cells has "
                              f"{cell_arr.shape}: one target per cell")
        cell_arr, target = cell_arr.astype(np.uint32), target.astype(np.float32)
        config = config.model_copy(update={"targets": TargetSpec(kind="array",
                                                                 cells=cell_arr.size)})
    return measure_into_file(driver, path, cells=cell_arr, target_us=target,
                             program=config.program, times_s=config.schedule.times_s(),
                             config=config.model_dump(mode="json"), overwrite=overwrite,
                             program_progress=program_progress, on_wait=on_wait, stop=stop)


def _as_run_on(config: RunConfig, driver: CrossbarDriver) -> RunConfig:
    """The configuration as the file records it: the chip the run really used, so that
    ``pcmlab resume`` reaches (or rebuilds) that chip."""
    from drivers.mock import MockDriver

    if isinstance(driver, MockDriver):
        return config.model_copy(update={"resource": "mock",
                                         "chip": driver.chip.config.model_dump(mode="json")})
    resource = getattr(driver, "resource_name", None) or getattr(driver, "port", None)
    if config.resource == "mock" and isinstance(resource, str):
        return config.model_copy(update={"resource": resource})
    return config


def _sink(writer: RunWriter, after: Callable[[int, float], None] | None = None):
    def sink(i: int, t_s: float, chip_t: float, wall: float,
             g: npt.NDArray[np.float32]) -> None:
        row = writer.append_readout(t_s, chip_t, wall, g)
        if row != i:  # the file and the schedule disagree: never write a readout twice
            raise SchemaError(f"{writer.path}: readout {i} written as row {row}")
        if after is not None:
            after(i, t_s)
    return sink


def replay_programming(driver: CrossbarDriver, path: str | Path,
                       program: ProgramVerifyConfig) -> ProgramResult:
    """Program a rebuilt (deterministic) mock chip again exactly as the file's run did, and
    check the verify readings match the file bit for bit."""
    with RunReader(path) as run:
        targets = run.targets()
        stored = run.programming()
    if stored is None:
        raise SchemaError(f"{path}: programming never finished; start a new run")
    result = program_and_verify(driver, targets.cell, targets.conductance_us, program)
    same = np.array_equal(result.g_us, stored.conductance_us, equal_nan=True)
    if not same or result.end_s != stored.end_chip_time_s:
        raise SchemaError(f"{path}: the mock chip rebuilt from the file's seed did not "
                          "program identically; the run cannot be resumed on it")
    return result


def resume_run(
    driver: CrossbarDriver,
    path: str | Path,
    *,
    reason: str = "resumed after the run stopped",
    on_wait: WaitCallback | None = None,
    stop: StopToken | None = None,
) -> tuple[int, int]:
    """Continue an interrupted run's schedule in its file. The driver must reach the chip
    that was programmed (its clock still anchored as in the file).

    Returns (readouts that were already there, readouts there now).
    """
    info = driver.info
    with RunReader(path) as run:
        if run.driver_identity != info.identity:
            raise ConfigError(f"{path} was measured on '{run.driver_identity}', not on "
                              f"'{info.identity}'")
        prog = run.programming()
        if prog is None:
            raise SchemaError(f"{path}: programming never finished, so there is nothing to "
                              "resume; start a new run")
        if prog.interrupted:
            raise SchemaError(f"{path}: programming was interrupted, so there is no schedule "
                              "to resume; start a new run")
        cells = run.targets().cell
        done = run.n_readouts
        times = run.schedule_time_s
    anchor = prog.end_chip_time_s
    if done >= times.size:
        log.info("%s: schedule already complete (%d readouts)", path, done)
        return done, done
    entry = {"resumed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "reason": reason, "chip_time_s": driver.clock.now()}
    writer, done = RunWriter.resume(path, entry)
    with writer:
        taken = run_schedule(driver, times, anchor, _sink(writer),
                             cells=_read_cells(info, cells), start=done, stop=stop,
                             on_wait=on_wait)
    return done, taken


def interrupted_run_plan(path: str | Path) -> dict[str, str]:
    """What ``pcmlab resume`` and ``pcmlab recover`` would do with the file of a run that
    stopped or was killed (the command line shows it beside a killed run)."""
    from pcmlab.store.reader import opens_closed

    with RunReader(path) as run:
        prog = run.programming()
        n = run.n_readouts
        planned = int(run.schedule_time_s.size)
    closed = opens_closed(path)
    recover = ("nothing: the file is closed, any HDF5 tool opens it" if closed else
               f"close the file for plain h5py/xarray, keeping its {n} complete readouts")
    if prog is None:
        resume = "cannot: programming never finished; start a new run"
    elif prog.interrupted:
        resume = "cannot: programming was interrupted; start a new run"
    elif n >= planned:
        resume = f"nothing to take: all {planned} readouts are in the file"
    else:
        resume = (f"keep the {n} completed readouts and take the remaining {planned - n} "
                  f"of {planned} on the schedule")
    return {"resume": resume, "recover": recover}
