"""Deploy a network on a chip: map it, program it, read it over time, evaluate it."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field

from drivers.base import CrossbarDriver
from pcmlab.catalog.registration import file_changed
from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.evaluator import AnalogEvaluator, Periphery, SimulatedAccuracy
from pcmlab.mapping import NetworkMapping, devices_needed
from pcmlab.pcm_model import ACCURACY_TIMES_S, YEAR_S, PCMModel
from pcmlab.store import RunReader
from pcmlab.store.evaluation import write_evaluation
from pcmlab.tasks import content_hash
from protocols.chip_inference import CHIP_COLUMNS, ChipInTheLoop, ChipModeAccuracy
from protocols.experiment import measure_into_file
from protocols.interrupt import StopToken
from protocols.program_verify import ProgramResult, ProgramVerifyConfig, ProgressCallback
from protocols.readout import ReadoutSchedule, WaitCallback

log = logging.getLogger(__name__)



class DeployConfig(StrictModel):
    """How a network is deployed and evaluated."""

    program: ProgramVerifyConfig = Field(ProgramVerifyConfig(), description="program-and-"
                                         "verify of the devices")
    # the first readout at the model's t0 (20 s) is the drift-compensation reference
    schedule: ReadoutSchedule = Field(ReadoutSchedule(
        t0_s=20.0, t_end_s=YEAR_S, n_readouts=9, include_s=ACCURACY_TIMES_S[:-1]),
        description="readouts: 20 s to a year, with the accuracy table's times")
    periphery: Periphery = Field(Periphery(), description="DAC/ADC of the analog layers")
    tiling: bool = Field(True, description="split layers larger than the array into tiles")
    parts: bool = Field(False, description="a network larger than the chip(s) is deployed "
                        "in successive parts, each programmed and read on the schedule")
    simulated_runs: int = Field(25, ge=0, description="Monte Carlo runs per time point")
    chip_in_the_loop: bool = Field(False, description="also run the test set through the "
                                   "chip's MVM at every readout: uncorrected, with drift "
                                   "compensation, and with chip-in-the-loop calibration")
    calibration_samples: int = Field(256, ge=1, description="calibration batch of the "
                                     "chip-in-the-loop calibration (the first inputs of "
                                     "the calibration data)")
    seed: int = Field(0, ge=0, description="seed of the simulated mode")


@dataclass(frozen=True)
class DeployResult:
    path: Path
    mapping: NetworkMapping
    programming: ProgramResult
    readouts_taken: int
    time_s: npt.NDArray[np.float64]  # actual readout times since programming
    measured_accuracy: npt.NDArray[np.float64]
    simulated: SimulatedAccuracy | None
    ideal_accuracy: float
    part_paths: tuple[Path, ...] = ()  # the files of a deployment in parts (first: path)
    chip: tuple[ChipModeAccuracy, ...] = ()  # chip mode at every readout (chip_in_the_loop)


def deploy_network(
    driver: CrossbarDriver,
    evaluator: AnalogEvaluator,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    path: str | Path,
    config: DeployConfig | None = None,
    *,
    pcm: PCMModel | None = None,
    overwrite: bool = False,
    program_progress: ProgressCallback | None = None,
    on_wait: WaitCallback | None = None,
    stop: StopToken | None = None,
    record: dict[str, Any] | None = None,
    x_calibration: torch.Tensor | None = None,
) -> DeployResult:
    """Map the evaluator's network onto the chip, program it, read it on the schedule into
    ``path``, then store measured (one per readout) and simulated accuracy in
    ``/evaluation``. With ``chip_in_the_loop``, also chip-mode accuracy at every readout
    (``protocols.chip_inference``), calibrated on the first ``calibration_samples`` of
    ``x_calibration``: training inputs, required then (never the test set); the file
    records which (``chip_calibration_inputs``)."""
    cfg = config or DeployConfig()
    info = driver.info
    if cfg.chip_in_the_loop and info.mvm is None:
        raise ConfigError(f"{info.identity} has no MVM capability: chip-in-the-loop "
                          "inference needs a chip that computes matrix-vector products")
    mapping = _place(evaluator, info, cfg)
    cells, target, layer = evaluator.device_targets(mapping)
    for name, cells_, share in mapping.utilization():
        log.info("layer %s: %d devices, %.2f %% of the array", name, cells_, 100 * share)
    if mapping.arrays < info.arrays:
        log.warning("the network fits %d of the %d chips; the others stay unprogrammed",
                    mapping.arrays, info.arrays)
    times = cfg.schedule.times_s()
    t0_s = (pcm or PCMModel()).calibration.t0_s  # recorded: the file's t0 from now on
    n_parts = math.ceil(mapping.arrays / info.arrays)
    paths = part_paths(Path(path), n_parts)
    if not overwrite:
        for p in paths:
            if p.exists():
                raise ConfigError(f"{p} exists; choose another output file (measurements are "
                                  "never overwritten)")
    loop, calibration_record = None, {}
    if cfg.chip_in_the_loop:
        if n_parts > 1:
            raise ConfigError("chip-in-the-loop inference needs the whole network on the "
                              "chip(s) at once, not deployed in parts")
        if x_calibration is None or x_calibration.shape[0] == 0:
            # never the test set: the calibrated accuracies are scored on x_test
            raise ConfigError("chip-in-the-loop calibration fits on training inputs: give "
                              "them as x_calibration (e.g. x_train); none were given")
        cal = x_calibration[:cfg.calibration_samples]
        calibration_record = {"chip_calibration_inputs": {
            "argument": "x_calibration", "samples": int(cal.shape[0]),
            "sha256": content_hash(cal), "same_as_test_inputs": _same_inputs(cal, x_test)}}
        if calibration_record["chip_calibration_inputs"]["same_as_test_inputs"]:
            log.warning("the chip-in-the-loop calibration inputs are the first test inputs: "
                        "the calibrated accuracies are scored on inputs they were fitted to")
        loop = ChipInTheLoop(evaluator, driver, mapping, x_test, y_test, cal)
    per_part = info.n_cells  # a part is what the driver's arrays hold at once
    part_of = cells // per_part
    plus, minus = mapping.pair_positions()
    results, taken = [], []
    for k, p in enumerate(paths):
        sel = np.flatnonzero(part_of == k)
        position = np.full(cells.size, -1, dtype=np.intp)
        position[sel] = np.arange(sel.size)
        mine = part_of[plus] == k  # both devices of a pair sit in one tile, one part
        if n_parts > 1:
            log.info("part %d of %d: %d devices", k + 1, n_parts, sel.size)
        record_k = {**(record or {}), "deploy": cfg.model_dump(mode="json"),
                    "drift_t0_s": t0_s, **calibration_record}
        if n_parts > 1:
            record_k.update(parts=[q.name for q in paths], part=k)
        result, n = measure_into_file(
            driver, p, cells=(cells[sel] - k * per_part).astype(np.uint32),
            target_us=target[sel], layer=layer[sel], program=cfg.program, times_s=times,
            config=record_k, network_mapping=mapping.to_json(),
            pairs=(position[plus[mine]], position[minus[mine]]), overwrite=overwrite,
            program_progress=program_progress, on_wait=on_wait, stop=stop,
            after_readout=None if loop is None else (lambda i, t_s: loop.at(t_s)),
            kind="deployment")
        results.append(result)
        taken.append(n)
        if result.interrupted or n < times.size:
            break
    chip = tuple(loop.results) if loop is not None else ()
    readouts, measured, simulated, ideal = _evaluate_into(
        paths[:len(results)], mapping, evaluator, x_test, y_test, cfg, pcm,
        complete=min(taken) == times.size,
        chip={name: [getattr(r, name) for r in chip] for name in CHIP_COLUMNS}
        if chip else None)
    file_changed(path, network_fingerprint=evaluator.fingerprint)  # its hash, with /evaluation
    return DeployResult(Path(path), mapping, results[0], min(taken), readouts.time_s,
                        measured, simulated, ideal, tuple(paths) if n_parts > 1 else (),
                        chip)


def _evaluate_into(paths: list[Path], mapping: NetworkMapping, evaluator: AnalogEvaluator,
                   x_test: torch.Tensor, y_test: torch.Tensor, cfg: DeployConfig,
                   pcm: PCMModel | None, *, complete: bool,
                   chip: dict[str, Any] | None = None, chip_note: str | None = None
                   ) -> tuple[_Combined, npt.NDArray[np.float64], SimulatedAccuracy | None,
                              float]:
    """Measured (every readout in the files), simulated and ideal accuracy, written into
    the first file's ``/evaluation`` (with ``chip`` columns, if given)."""
    cells, _, _ = evaluator.device_targets(mapping)
    per_part = mapping.rows * mapping.cols * (mapping.arrays // len(paths))
    readouts = combined_readouts(paths, mapping, cells, per_part)
    t0_s = recorded_t0_s(paths[0])
    measured = (evaluator.measured(x_test, y_test, mapping, readouts.conductance_us,
                                   time_s=readouts.time_s, t0_s=t0_s)
                if readouts.n else np.zeros(0))
    simulated = None
    if cfg.simulated_runs > 0:
        simulated = evaluator.simulate(x_test, y_test, mapping, cfg.schedule.times_s(),
                                       cfg.simulated_runs, np.random.default_rng(cfg.seed),
                                       pcm=pcm,
                                       verify_tolerance=(cfg.program.tolerance_abs_us,
                                                         cfg.program.tolerance_rel),
                                       age_offset_s=combined_age_offsets(paths, cells,
                                                                         per_part))
    ideal = evaluator.ideal_accuracy(x_test, y_test)
    attrs: dict[str, Any] = {
        "periphery": cfg.periphery.model_dump(mode="json"),
        "drift_compensation_reference": f"readout nearest t0 = {t0_s:g} s",
        "drift_compensation_estimator": evaluator.gdc_estimator,
        "simulated_includes": "" if simulated is None else simulated.includes,
        "network_fingerprint": evaluator.fingerprint,
        "layers": json.dumps([asdict(r) for r in evaluator.report]),
        # a stopped deployment's evaluation covers the readouts taken; 'pcmlab resume'
        # makes it again over every readout
        "schedule_complete": int(complete)}
    if chip_note is not None:
        attrs["chip_mode"] = chip_note
    write_evaluation(
        paths[0], measured_time_s=readouts.time_s, measured_accuracy=measured,
        simulated_time_s=None if simulated is None else simulated.time_s,
        simulated_accuracy=None if simulated is None else simulated.accuracy,
        ideal_accuracy=ideal, attrs=attrs, chip=chip)
    return readouts, measured, simulated, ideal


def _same_inputs(x_calibration: torch.Tensor, x_test: torch.Tensor) -> bool:
    """Whether the calibration batch is the test set's first inputs."""
    n = x_calibration.shape[0]
    return (x_test.shape[0] >= n and x_test.shape[1:] == x_calibration.shape[1:]
            and bool(torch.equal(x_test[:n], x_calibration)))


def _place(evaluator: AnalogEvaluator, info: Any, cfg: DeployConfig) -> NetworkMapping:
    """The mapping on the driver's arrays; with ``cfg.parts``, on as many arrays of the
    driver's as the network needs (deployed one driver-full at a time)."""
    rows, cols = info.geometry.rows // info.arrays, info.geometry.cols
    if not cfg.parts:
        return evaluator.mapping(rows, cols, info.g_max_us, tiling=cfg.tiling,
                                 arrays=info.arrays)
    need = devices_needed(evaluator.layer_specs())
    start = max(info.arrays, math.ceil(need / (rows * cols)))
    for arrays in range(start, 2 * start + 2):  # placement leaves gaps: a few more
        try:
            return evaluator.mapping(rows, cols, info.g_max_us, tiling=cfg.tiling,
                                     arrays=math.ceil(arrays / info.arrays) * info.arrays)
        except ConfigError:
            if arrays == 2 * start + 1:
                raise
    raise AssertionError("unreachable")


def part_paths(path: Path, n_parts: int) -> list[Path]:
    """The files of a deployment in parts: ``run.h5``, ``run.part2.h5``, ..."""
    return [path] + [path.with_name(f"{path.stem}.part{k + 1}{path.suffix}")
                     for k in range(1, n_parts)]


@dataclass(frozen=True)
class _Combined:
    time_s: npt.NDArray[np.float64]
    conductance_us: npt.NDArray[np.float32]

    @property
    def n(self) -> int:
        return int(self.time_s.size)


def combined_readouts(paths: list[Path], mapping: NetworkMapping,
                      cells: npt.NDArray[np.uint32], cells_per_part: int) -> _Combined:
    """Readout i of a network deployed in parts: the devices of every part at readout i
    (the same time after that part's programming), in the mapping's targets order. Time
    of readout i: the first part's."""
    rows, times = [], None
    part_of = cells // cells_per_part
    for k, p in enumerate(paths):
        with RunReader(p) as run:
            got = run.readouts()
            mine = cells[part_of == k] - k * cells_per_part
            if not np.array_equal(run.targets().cell, mine):
                raise ConfigError(f"{p}: the file's cells are not the mapping's part {k + 1}; "
                                  "the file was not written for this network")
        rows.append(got.conductance_us)
        times = got.time_s if times is None else times
    n = min(r.shape[0] for r in rows)
    g = np.empty((n, cells.size), dtype=np.float32)
    for k, r in enumerate(rows):
        g[:, part_of == k] = r[:n]
    assert times is not None
    return _Combined(np.asarray(times[:n], dtype=np.float64), g)


def combined_age_offsets(paths: list[Path], cells: npt.NDArray[np.uint32],
                         cells_per_part: int) -> npt.NDArray[np.float64]:
    """Per device (the mapping's targets order): how much older it is than its readouts'
    times, which count from the end of its part's programming: end of programming minus
    the device's last pulse (0 where the file has none)."""
    out = np.zeros(cells.size)
    part_of = cells // cells_per_part
    for k, p in enumerate(paths):
        with RunReader(p) as run:
            prog = run.programming()
        if prog is not None:
            out[part_of == k] = np.nan_to_num(prog.end_chip_time_s - prog.last_pulse_s)
    return np.maximum(out, 0.0)


def recorded_t0_s(path: str | Path) -> float:
    """The drift-compensation reference t0 (s after programming) a deployment's file
    records (``drift_t0_s``, the PCM model's t0 it was deployed with); the one source of
    t0 for its evaluation. A file from before pcmlab recorded it: the default 20 s."""
    with RunReader(path) as run:
        t0_s = run.config.get("drift_t0_s")
    if t0_s is None:
        t0_s = PCMModel().calibration.t0_s
        log.warning("%s does not record its drift reference t0 (a file from an earlier "
                    "pcmlab): taking the model's default, %g s", path, t0_s)
    return float(t0_s)


def deployment_readouts(path: str | Path, evaluator: AnalogEvaluator
                        ) -> tuple[NetworkMapping, _Combined]:
    """A deployment file's mapping and its readouts (every part's devices, in the
    mapping's targets order). Refuses a file without ``/network`` or one made for
    another model."""
    with RunReader(path) as run:
        text = run.network_mapping_json
        if text is None:
            raise ConfigError(f"{path}: no /network in this file: it is not a network "
                              "deployment (made by 'pcmlab deploy' or 'pcmlab demo')")
        mapping = NetworkMapping.from_json(text)
        evaluator.check_mapping(mapping)
        names = list(run.config.get("parts", [])) or [Path(path).name]
    cells, _, _ = evaluator.device_targets(mapping)
    paths = [Path(path).with_name(n) for n in names]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"{path} is part 1 of a deployment in {len(paths)} parts; "
                              f"{p} is missing (keep the part files beside the first)")
    per_part = mapping.rows * mapping.cols * (mapping.arrays // len(paths))
    readouts = combined_readouts(paths, mapping, cells, per_part)
    if readouts.n == 0:
        raise ConfigError(f"{path}: no readouts to evaluate")
    return mapping, readouts


def evaluate_file(path: str | Path, evaluator: AnalogEvaluator, x_test: torch.Tensor,
                  y_test: torch.Tensor) -> tuple[npt.NDArray[np.float64],
                                                 npt.NDArray[np.float64]]:
    """Measured-mode accuracy for every readout of a deployment file: (time_s, accuracy),
    drift compensation referenced to the readout nearest the file's t0
    (``recorded_t0_s``), as the deployment's own ``/evaluation``.

    Refuses a file without ``/network`` or one made for another model."""
    mapping, readouts = deployment_readouts(path, evaluator)
    return readouts.time_s, evaluator.measured(x_test, y_test, mapping,
                                               readouts.conductance_us,
                                               time_s=readouts.time_s,
                                               t0_s=recorded_t0_s(path))


def replay_deployment(driver: CrossbarDriver, path: str | Path,
                      evaluator: AnalogEvaluator) -> None:
    """Bring a rebuilt (deterministic) mock chip to where the file's deployment stopped:
    program it again as the deployment did (pair compensation included) and take the
    readouts the file holds again, at their chip times, each checked bit for bit against
    the file. Chip mode's products, which drew from the chip between readouts, cannot be
    replayed: such a deployment is refused."""
    from protocols.experiment import _read_cells
    from protocols.program_verify import program_pairs

    with RunReader(path) as run:
        config = run.config
        mapping = NetworkMapping.from_json(run.network_mapping_json or "{}")
        stored = run.programming()
        readouts = run.readouts()
    cfg = DeployConfig.model_validate(config["deploy"])
    if cfg.chip_in_the_loop or cfg.parts:
        what = "ran chip mode" if cfg.chip_in_the_loop else "was deployed in parts"
        raise ConfigError(f"{path} {what} on the in-process mock chip, which cannot be "
                          "rebuilt to that state; resume runs on a chip or a mock server "
                          "(--resource)")
    if stored is None or stored.interrupted:
        raise SchemaError(f"{path}: programming never finished; deploy again")
    evaluator.check_mapping(mapping)
    cells, target, _ = evaluator.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    result = program_pairs(driver, cells, target, plus, minus, cfg.program)
    if (not np.array_equal(result.g_us, stored.conductance_us, equal_nan=True)
            or result.end_s != stored.end_chip_time_s):
        raise SchemaError(f"{path}: the mock chip rebuilt from the file's seed did not "
                          "program identically; the deployment cannot be resumed on it")
    read_cells = _read_cells(driver.info, cells)
    for i in range(readouts.n):
        driver.clock.sleep_until(float(readouts.chip_time_s[i]))
        if not np.array_equal(driver.read(read_cells), readouts.conductance_us[i],
                              equal_nan=True):
            raise SchemaError(f"{path}: readout {i + 1} on the rebuilt mock chip differs "
                              "from the file's; the deployment cannot be resumed on it")


def resume_deployment(driver: CrossbarDriver, path: str | Path, evaluator: AnalogEvaluator,
                      x_test: torch.Tensor, y_test: torch.Tensor, *,
                      pcm: PCMModel | None = None, on_wait: WaitCallback | None = None,
                      stop: StopToken | None = None) -> tuple[int, int]:
    """Continue a stopped deployment's schedule in its file (``resume_run``; the driver
    reaches the programmed chip), then make its ``/evaluation`` again over every readout,
    as ``deploy_network`` does. Chip mode is not resumed: its columns stay those of the
    readouts before the stop (``chip_time_s`` says which). Returns (readouts that were
    there, readouts there now)."""
    from protocols.experiment import resume_run

    with RunReader(path) as run:
        config = run.config
        if "deploy" not in config or run.network_mapping_json is None:
            raise ConfigError(f"{path} is not a network deployment; resume it with "
                              "protocols.experiment.resume_run")
        mapping = NetworkMapping.from_json(run.network_mapping_json)
        old = run.evaluation() or {}
    if config.get("parts"):
        raise ConfigError(f"{path} is part of a deployment in parts; resuming one is not "
                          "supported: deploy it again")
    evaluator.check_mapping(mapping)
    cfg = DeployConfig.model_validate(config["deploy"])
    chip = {name: old[f"chip_{name}"] for name in CHIP_COLUMNS if f"chip_{name}" in old}
    before, after = resume_run(driver, path, reason="deployment resumed after it stopped",
                               on_wait=on_wait, stop=stop)
    note = None
    if chip:
        note = (f"chip mode at the first {len(chip['time_s'])} readouts only: the "
                "deployment stopped and chip mode is not resumed")
    _evaluate_into([Path(path)], mapping, evaluator, x_test, y_test, cfg, pcm,
                   complete=after == cfg.schedule.times_s().size, chip=chip or None,
                   chip_note=note)
    return before, after
