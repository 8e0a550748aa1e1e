"""Deploy a network on a chip: map it, program it, read it over time, evaluate it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field

from drivers.base import CrossbarDriver
from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError
from pcmlab.evaluator import AnalogEvaluator, Periphery, SimulatedAccuracy
from pcmlab.mapping import NetworkMapping
from pcmlab.pcm_model import ACCURACY_TIMES_S, YEAR_S, PCMModel
from pcmlab.store import RunReader
from pcmlab.store.evaluation import write_evaluation
from protocols.experiment import measure_run
from protocols.interrupt import StopToken
from protocols.program_verify import ProgramResult, ProgramVerifyConfig, ProgressCallback
from protocols.readout import ReadoutSchedule, WaitCallback

log = logging.getLogger(__name__)



class DeployConfig(StrictModel):
    """How a network is deployed and evaluated."""

    program: ProgramVerifyConfig = ProgramVerifyConfig()
    # the first readout at the model's t0 (20 s) is the drift-compensation reference
    schedule: ReadoutSchedule = ReadoutSchedule(
        t0_s=20.0, t_end_s=YEAR_S, n_readouts=9, include_s=ACCURACY_TIMES_S[:-1])
    periphery: Periphery = Periphery()
    tiling: bool = True
    simulated_runs: int = Field(25, ge=0, description="Monte Carlo runs per time point")
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
) -> DeployResult:
    """Map the evaluator's network onto the chip, program it, read it on the schedule into
    ``path``, then store measured (one per readout) and simulated accuracy in
    ``/evaluation``."""
    cfg = config or DeployConfig()
    info = driver.info
    mapping = evaluator.mapping(info.geometry.rows // info.arrays, info.geometry.cols,
                                info.g_max_us, tiling=cfg.tiling, arrays=info.arrays)
    cells, target, layer = evaluator.device_targets(mapping)
    for name, cells_, share in mapping.utilization():
        log.info("layer %s: %d devices, %.2f %% of the array", name, cells_, 100 * share)
    if mapping.arrays < info.arrays:
        log.warning("the network fits %d of the %d chips; the others stay unprogrammed",
                    mapping.arrays, info.arrays)
    times = cfg.schedule.times_s()
    result, taken = measure_run(
        driver, path, cells=cells, target_us=target, layer=layer, program=cfg.program,
        times_s=times, config={**(record or {}), "deploy": cfg.model_dump(mode="json")},
        network_mapping=mapping.to_json(), pairs=mapping.pair_positions(),
        overwrite=overwrite,
        program_progress=program_progress, on_wait=on_wait, stop=stop)
    with RunReader(path) as run:
        readouts = run.readouts()
    t0_s = (pcm or PCMModel()).calibration.t0_s
    measured = (evaluator.measured(x_test, y_test, mapping, readouts.conductance_us,
                                   time_s=readouts.time_s, t0_s=t0_s)
                if readouts.n else np.zeros(0))
    simulated = None
    if cfg.simulated_runs > 0:
        simulated = evaluator.simulate(x_test, y_test, mapping, times, cfg.simulated_runs,
                                       np.random.default_rng(cfg.seed), pcm=pcm)
    ideal = evaluator.ideal_accuracy(x_test, y_test)
    write_evaluation(
        path, measured_time_s=readouts.time_s, measured_accuracy=measured,
        simulated_time_s=None if simulated is None else simulated.time_s,
        simulated_accuracy=None if simulated is None else simulated.accuracy,
        ideal_accuracy=ideal,
        attrs={"periphery": cfg.periphery.model_dump(mode="json"),
               "drift_compensation_reference": f"readout nearest t0 = {t0_s:g} s",
               "drift_compensation_estimator": evaluator.gdc_estimator,
               "network_fingerprint": evaluator.fingerprint,
               "layers": json.dumps([asdict(r) for r in evaluator.report])})
    return DeployResult(Path(path), mapping, result, taken, readouts.time_s, measured,
                        simulated, ideal)


def evaluate_file(path: str | Path, evaluator: AnalogEvaluator, x_test: torch.Tensor,
                  y_test: torch.Tensor) -> tuple[npt.NDArray[np.float64],
                                                 npt.NDArray[np.float64]]:
    """Measured-mode accuracy for every readout of a deployment file: (time_s, accuracy).

    Refuses a file without ``/network`` or one made for another model."""
    with RunReader(path) as run:
        text = run.network_mapping_json
        if text is None:
            raise ConfigError(f"{path}: no /network in this file: it is not a network "
                              "deployment (made by 'pcmlab deploy' or 'pcmlab demo')")
        mapping = NetworkMapping.from_json(text)
        evaluator.check_mapping(mapping)
        cells, _, _ = evaluator.device_targets(mapping)
        if not np.array_equal(run.targets().cell, cells):
            raise ConfigError(f"{path}: the file's cells are not the mapping's; the file "
                              "was not written for this network")
        readouts = run.readouts()
    if readouts.n == 0:
        raise ConfigError(f"{path}: no readouts to evaluate")
    return readouts.time_s, evaluator.measured(x_test, y_test, mapping,
                                               readouts.conductance_us,
                                               time_s=readouts.time_s)
