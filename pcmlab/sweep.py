"""Simulation sweeps on Dask: a grid of periphery, training method, noise switches, drift
compensation and PCM calibrations, each point simulated over many Monte Carlo runs.

A sweep file (``SweepConfig``) names the network, the data, the training settings and the
axes to cross. The sweep is a graph of tasks: one per training the grid needs (stage 1 of
the AnalogNets method is shared by every ADC width) and one per (grid point, block of
runs), each evaluation fed by its training. It runs on ``dask.distributed``: an in-process
cluster by default, a local cluster of N worker processes, or an existing scheduler.

Deterministic: every block of runs draws from its own random stream, keyed by the grid
point's coordinates and the block's index (``numpy.random.SeedSequence`` with a spawn key),
and every task computes with one torch thread, so the numbers are bit for bit the same
whatever the number of workers and the order in which tasks finish.

Resumable: each finished task is written at once into ``OUTPUT.parts/`` (atomically, named
by a hash of everything that determines its result); a sweep started again computes only
the tasks whose files are missing, and says how many it kept. The result is an xarray
Dataset written as NetCDF (h5netcdf): one dimension per axis, plus ``run`` and ``time``.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from pcmlab import __version__
from pcmlab.config import StrictModel, load_model
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.pcm_model import ACCURACY_TIME_LABELS, ACCURACY_TIMES_S, PCMCalibration
from pcmlab.training import TrainingConfig

if TYPE_CHECKING:
    import xarray as xr
    from torch import nn

    from pcmlab.analog.periphery import LayerRanges, Periphery
    from pcmlab.tasks import Dataset

log = logging.getLogger(__name__)

SWEEP_SCHEMA = "pcmlab-sweep/1"
METHODS = ("as-is", "off-the-shelf", "noise", "full")
SWITCHES = ("programming_noise", "drift", "read_noise", "drift_compensation", "faults")
# (axis, method) pairs where the axis cannot change the method's numbers: refused, never
# ignored (every other axis changes every method's numbers; tests/pcmlab/test_sweep_axes.py)
IGNORED: dict[tuple[str, str], str] = {
    ("eta", "as-is"): "the given weights are evaluated untrained",
    ("eta", "off-the-shelf"): "float training injects no weight noise",
    ("adc_gain", "full"): "the full method learns its own ADC gain",
}

# axis -> (python type, default, what it is)
AXES: dict[str, tuple[type, Any, str]] = {
    "bits": (int, 8, "ADC bits; the DAC gets one bit more (as in the AnalogNets paper)"),
    "adc_bits": (int, None, "ADC bits alone (instead of bits)"),
    "dac_bits": (int, None, "DAC bits alone (instead of bits)"),
    "adc_gain": (float, 1.0, "ADC gain (the full method learns its own)"),
    # not "method": xarray's Dataset.sel has a keyword of that name
    "training": (str, "off-the-shelf", "as-is (the given weights), off-the-shelf (float "
                 "training), noise (weight-noise injection), full (the AnalogNets method)"),
    "eta": (float, None, "training weight noise / W_max (default: training.eta)"),
    "programming_noise": (bool, True, "programming noise in the simulation"),
    "drift": (bool, True, "conductance drift"),
    "read_noise": (bool, True, "1/f read noise"),
    "drift_compensation": (bool, True, "global drift compensation"),
    "faults": (bool, True, "the calibration's faulty devices (stuck-RESET, stuck-SET, weak), "
               "with the pair compensation a deployment does"),
    "calibration": (str, "published", "PCM model constants: 'published' or a TOML file "
                    "written by 'pcmlab fit' (relative to the sweep file)"),
}


class NetworkSpec(StrictModel):
    """The network of a sweep."""

    model: str | None = Field(None, description="a model file or pkg.module:factory; "
                              "default: the digits reference CNN")
    weights: str | None = Field(None, description="weights of a factory model")
    keep_digital: tuple[str, ...] = Field((), description="layers kept digital (fnmatch)")


class DataSpec(StrictModel):
    """The data of a sweep."""

    path: str | None = Field(None, description=".npz with x_test, y_test (and x_train, "
                             "y_train); default: the digits split")
    seed: int = Field(0, ge=0, description="seed of the digits split")


class SweepConfig(StrictModel):
    """A sweep, as written in a TOML file for ``pcmlab sweep``."""

    network: NetworkSpec = Field(NetworkSpec(), description="what is simulated")
    data: DataSpec = Field(DataSpec(), description="training and test data")
    training: TrainingConfig = Field(TrainingConfig(), description="training settings "
                                     "(stage 1 and 2 epochs, eta, ...)")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="axis name -> "
                                       "values; the grid is their product, in file order")
    times_s: tuple[float, ...] = Field(ACCURACY_TIMES_S, description="simulated times "
                                       "after programming, s")
    runs: int = Field(25, ge=1, le=100_000, description="Monte Carlo runs per grid point")
    runs_per_task: int = Field(5, ge=1, description="runs in one task")
    seed: int = Field(0, ge=0, description="the sweep's seed")
    rows: int = Field(256, ge=1, description="array rows of the mapping")
    cols: int = Field(512, ge=1, description="array columns of the mapping")
    device: str = Field("cpu", description="torch device of the simulations ('cpu', "
                        "'cuda', 'cuda:1', ...): a worker without it refuses the task")

    @field_validator("device")
    @classmethod
    def _torch_device(cls, device: str) -> str:
        import torch

        try:
            return str(torch.device(device))
        except (RuntimeError, ValueError):
            raise ValueError(f"device {device!r} is not a torch device; e.g. 'cpu', 'cuda', "
                             "'cuda:1'") from None

    @field_validator("axes")
    @classmethod
    def _known_axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out = {}
        for name, values in axes.items():
            if name not in AXES:
                raise ValueError(f"unknown axis '{name}'; the axes are "
                                 f"{', '.join(AXES)}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"axis '{name}' needs a list of at least one value")
            kind = AXES[name][0]
            checked = []
            for v in values:
                if kind is float and isinstance(v, int) and not isinstance(v, bool):
                    v = float(v)
                if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                    raise ValueError(f"axis '{name}': {v!r} is not a {kind.__name__}")
                checked.append(v)
            if len(set(checked)) != len(checked):
                raise ValueError(f"axis '{name}' lists a value twice: {checked}")
            bad = [v for v in checked if name == "training" and v not in METHODS]
            if bad:
                raise ValueError(f"axis 'training': {bad[0]!r} is not one of "
                                 f"{', '.join(METHODS)}")
            bad = [v for v in checked if "bits" in name and not 1 <= v <= 16]
            if bad:
                raise ValueError(f"axis '{name}': {bad[0]} bits is outside 1..16")
            out[name] = checked
        if "bits" in out and ({"adc_bits", "dac_bits"} & set(out)):
            raise ValueError("give 'bits' (ADC, DAC one more) or 'adc_bits'/'dac_bits', "
                             "not both")
        return out

    @model_validator(mode="after")
    def _runs_divide(self) -> SweepConfig:
        if not self.times_s or any(t <= 0 for t in self.times_s):
            raise ValueError(f"times_s = {list(self.times_s)}: need positive times")
        return self

    @model_validator(mode="after")
    def _no_axis_ignored(self) -> SweepConfig:
        methods = self.axes.get("training") or [setting({}, "training", self)]
        for (axis, method), why in IGNORED.items():
            if axis in self.axes and method in methods:
                raise ValueError(f"axis '{axis}' changes nothing for training = '{method}' "
                                 f"({why}): its points would differ only by their random "
                                 f"streams; sweep '{axis}' without '{method}' (a sweep "
                                 "of its own for that method)")
        return self

    def points(self) -> list[dict[str, Any]]:
        """Every grid point: axis -> value, in file order (the first axis slowest)."""
        names = list(self.axes)
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(self.axes[n] for n in names))]

    def blocks(self) -> list[tuple[int, int]]:
        """(first run, runs) of every block of runs of a point."""
        return [(start, min(self.runs_per_task, self.runs - start))
                for start in range(0, self.runs, self.runs_per_task)]


# -- what a task computes ---------------------------------------------------------------------
def setting(point: dict[str, Any], name: str, config: SweepConfig) -> Any:
    """The value of ``name`` at a grid point: the axis value, else its default."""
    if name in point:
        return point[name]
    if name == "eta":
        return config.training.eta
    if name == "training" and config.network.weights is not None:
        return "as-is"
    return AXES[name][1]


def converters(point: dict[str, Any], config: SweepConfig) -> tuple[int, int]:
    """(dac_bits, adc_bits) of a point."""
    bits = setting(point, "bits", config)
    adc = setting(point, "adc_bits", config) or bits
    dac = setting(point, "dac_bits", config) or (bits + 1 if "adc_bits" not in point
                                                 else adc + 1)
    return int(dac), int(adc)


def point_settings(point: dict[str, Any], config: SweepConfig) -> dict[str, Any]:
    """Every setting of a grid point (its axis values, the defaults for the rest), the
    converters resolved."""
    full = {name: setting(point, name, config) for name in AXES}
    full["dac_bits"], full["adc_bits"] = converters(point, config)
    return full


def training_key(point: dict[str, Any], config: SweepConfig) -> tuple[Any, ...]:
    """What a point's trained model depends on (points that share it share one training)."""
    method = setting(point, "training", config)
    if method in ("as-is", "off-the-shelf"):
        return (method,)
    if method == "noise":
        return (method, float(setting(point, "eta", config)))
    dac, adc = converters(point, config)  # the full method trains its converters
    return (method, float(setting(point, "eta", config)), adc, dac)


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class Trained:
    """A trained network and, for the AnalogNets method, its learned ranges and periphery."""

    model: nn.Module
    ranges: LayerRanges | None = None
    periphery: Periphery | None = None


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # N workers on N cores, and the same numbers on any of them


def train_task(base: Trained, data: Dataset, key: tuple[Any, ...],
               training: TrainingConfig, stage1: Any = None,
               keep_digital: tuple[str, ...] = ()) -> Trained:
    """The training a ``training_key`` names, from the untrained ``base.model``
    (``stage1``: the AnalogNets stage-1 result)."""
    from pcmlab.tasks import train_classifier
    from pcmlab.training import train_analognets

    _one_thread()
    method = key[0]
    epochs = training.stage1_epochs + training.stage2_epochs  # the same budget for all
    if method == "as-is":
        return base
    if method in ("off-the-shelf", "noise"):
        eta = key[1] if method == "noise" else 0.0
        model = train_classifier(copy.deepcopy(base.model), data.x_train, data.y_train,
                                 epochs=epochs, lr=training.lr, batch=training.batch,
                                 weight_noise=eta, seed=training.seed)
        return Trained(model)
    cfg = training.model_copy(update={"eta": key[1], "adc_bits": key[2], "dac_bits": key[3]})
    result = train_analognets(stage1.model, data.x_train, data.y_train, cfg, stage1=stage1,
                              keep_digital=keep_digital)
    return Trained(result.model, result.ranges, result.periphery)


def stage1_task(base: Trained, data: Dataset, eta: float, training: TrainingConfig) -> Any:
    """Stage 1 of the AnalogNets method (shared by every ADC width)."""
    from pcmlab.training import train_clipped

    _one_thread()
    return train_clipped(copy.deepcopy(base.model), data.x_train, data.y_train,
                         training.model_copy(update={"eta": eta}))


@dataclass(frozen=True)
class EvalTask:
    """One block of Monte Carlo runs at one grid point: everything its numbers depend on."""

    point: tuple[tuple[str, Any], ...]
    first_run: int
    runs: int
    seed: int
    times_s: tuple[float, ...]
    rows: int
    cols: int
    keep_digital: tuple[str, ...]
    calibration: PCMCalibration
    device: str = "cpu"

    def stream(self) -> np.random.Generator:
        """This block's own random stream: keyed by the point and the first run, so no
        other task (and no order of execution) touches it."""
        key = int(_digest(self.point)[:8], 16)
        return np.random.default_rng(np.random.SeedSequence(self.seed,
                                                            spawn_key=(key, self.first_run)))


def _worker_device(device: str) -> str:
    """``device`` if this worker has it; otherwise the task is refused, naming it (numbers
    computed on another device would be mixed into the sweep silently)."""
    import socket

    import torch

    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f"sweep device '{device}': this worker ({socket.gethostname()}) "
                          f"has no such device ({exc}); set 'device' in the sweep file to "
                          "one every worker has, e.g. 'cpu'") from None
    return device


def eval_task(task: EvalTask, trained: Trained, data: Dataset, config: SweepConfig
              ) -> np.ndarray:
    """Accuracy (runs x times) of ``task``'s block in simulated mode."""

    from pcmlab.analog.periphery import Periphery
    from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches
    from pcmlab.mapping import devices_needed
    from pcmlab.pcm_model import PCMModel

    _one_thread()
    point = dict(task.point)
    device = _worker_device(task.device)
    if trained.periphery is not None:  # the full method: its learned ranges and gain
        periphery, ranges = trained.periphery, trained.ranges
    else:
        dac, adc = converters(point, config)
        periphery = Periphery(dac_bits=dac, adc_bits=adc,
                              adc_gain=setting(point, "adc_gain", config))
        ranges = None
    ev = AnalogEvaluator(trained.model, data.x_train, periphery, ranges=ranges,
                         keep_digital=task.keep_digital, device=device)
    need = devices_needed(ev.layer_specs())
    # the chip's G_max, as a deployment maps to it (the task key holds the calibration)
    mapping = ev.mapping(task.rows, task.cols, g_max_us=task.calibration.g_max_us,
                         arrays=max(1, -(-need // (task.rows * task.cols))) + 1)
    noise = NoiseSwitches(programming=setting(point, "programming_noise", config),
                          drift=setting(point, "drift", config),
                          read=setting(point, "read_noise", config),
                          drift_compensation=setting(point, "drift_compensation", config),
                          faults=setting(point, "faults", config))
    sim = ev.simulate(data.x_test, data.y_test, mapping, task.times_s, task.runs,
                      task.stream(), pcm=PCMModel(task.calibration), noise=noise)
    return np.asarray(sim.accuracy, dtype=np.float64)


# -- the sweep --------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    """What ``run_sweep`` did: the result, and how much of it an earlier start had done."""

    dataset: xr.Dataset | None
    evaluations: int  # evaluation tasks of the whole sweep (point x block of runs)
    kept: int  # evaluation tasks found finished from an earlier start
    computed: int  # evaluation tasks computed now
    trainings: int  # training tasks computed now (stage 1 of the full method included)


Progress = Callable[[int, int], None]  # (done, total)


class _Parts:
    """The folder of finished tasks beside the output: one file per task, atomically."""

    def __init__(self, output: Path) -> None:
        self.folder = output.with_name(output.name + ".parts")  # made at the first write
        for stale in self.folder.glob(".tmp-*"):  # a write a kill interrupted: never whole
            stale.unlink(missing_ok=True)

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.folder / f"{kind}-{key}{suffix}"

    def has(self, kind: str, key: str, suffix: str) -> bool:
        return self._path(kind, key, suffix).is_file()

    def write_eval(self, key: str, accuracy: np.ndarray) -> None:
        self._atomic(self._path("eval", key, ".npy"), lambda f: np.save(f, accuracy))

    def read_eval(self, key: str) -> np.ndarray:
        return np.load(self._path("eval", key, ".npy"), allow_pickle=False)

    def write_trained(self, key: str, trained: Any) -> None:
        import torch

        self._atomic(self._path("train", key, ".pt"), lambda f: torch.save(trained, f))

    def read_trained(self, key: str) -> Any:
        import torch

        # written by this sweep itself (a trained nn.Module): not an outside file
        return torch.load(self._path("train", key, ".pt"), weights_only=False)

    def _atomic(self, path: Path, write: Callable[[Any], None]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(self.folder, ".tmp-", path.suffix)
        # readable as a plain file is (0644 less the umask): mkstemp's 0600 would keep the
        # parts from the lab group; never writable by others, since a training part is
        # unpickled on resume (a group-writable one would let anyone run code in it)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_sweep(path: str | Path) -> SweepConfig:
    """A sweep file (.toml or .json), validated."""
    return load_model(SweepConfig, path)


def _calibration(value: str, base: Path | None) -> PCMCalibration:
    if value == "published":
        return PCMCalibration()
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    return load_model(PCMCalibration, path)


def _network_and_data(config: SweepConfig, base: Path | None) -> tuple[nn.Module, Dataset]:
    """The untrained (or given) network and the data, loaded once, on the client."""
    from pcmlab.nn_model import load_model as load_network
    from pcmlab.tasks import load_digits, load_npz_dataset, reference_cnn

    def rel(p: str) -> str:
        return str(base / p) if base is not None and not Path(p).is_absolute() and (
            base / p).exists() else p

    net = config.network
    if net.model is None:
        if net.weights is not None:
            raise ConfigError("network.weights goes with network.model = 'pkg.module:factory'")
        model, shape = reference_cnn(config.training.seed), (1, 8, 8)
    else:
        from pcmlab.nn_model import ModelFile, import_factory, is_factory_spec

        if is_factory_spec(net.model) and net.weights is None:
            loaded = ModelFile(import_factory(net.model), None, {}, net.model)
        else:
            loaded = load_network(rel(net.model),
                                  Path(rel(net.weights)) if net.weights else None)
        model, shape = loaded.model, loaded.input_shape
    if config.data.path is not None:
        data = load_npz_dataset(rel(config.data.path), shape)
    else:
        data = load_digits(seed=config.data.seed, input_shape=shape or (1, 8, 8))
    return model, data


def _client(workers: int | None, scheduler: str | None):  # -> dask.distributed.Client
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask is a dependency
        raise ConfigError("sweeps need dask.distributed: pip install 'dask[distributed]'"
                          ) from None
    for name in ("distributed", "distributed.nanny", "distributed.scheduler",
                 "distributed.worker", "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=10)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: no Dask scheduler answers there "
                              f"({exc}); start one with 'dask scheduler'") from None
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers {workers}: need at least one worker")
        import dask

        # Dask's default worker environment (MALLOC_TRIM_THRESHOLD_=65536,
        # OMP_NUM_THREADS=1) made each task 2x slower here (benchmarks/sweep.py); the
        # tasks set one torch thread themselves, so the workers start with none of it.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
    else:  # the embedded default: one worker thread in this process
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    return Client(cluster)


Plan = tuple[list[tuple[str, dict[str, Any], "EvalTask"]], Callable[[tuple[Any, ...]], str]]


def _network_and_data_ids(model: nn.Module, data: Dataset) -> dict[str, str]:
    """The network's fingerprint and the data's content hash (keys and the catalog)."""
    from pcmlab.analog import fingerprint
    from pcmlab.tasks import content_hash

    return {"network": fingerprint(model),
            "data": data.source.sha256 if data.source else content_hash(
                data.x_train, data.y_train, data.x_test, data.y_test)}


def plan(config: SweepConfig, model: nn.Module, data: Dataset, base: Path | None = None
         ) -> Plan:
    """Every evaluation task of the sweep as (part key, grid point, task), and the part key
    of a training (by its ``training_key``). A key is a hash of everything that determines
    the part's numbers."""
    import torch

    points = config.points()
    calibrations = {c: _calibration(c, base)
                    for c in {setting(p, "calibration", config) for p in points}}
    settings = {**_network_and_data_ids(model, data),
                "seed": config.seed, "times": list(config.times_s),
                "rows": config.rows, "cols": config.cols, "device": config.device}
    # the software the numbers are computed with (a resume elsewhere recomputes)
    software = {"pcmlab": __version__, "torch": torch.__version__, "numpy": np.__version__}

    def train_id(key: tuple[Any, ...]) -> str:
        return _digest("train", software, settings["network"], settings["data"],
                       config.training.model_dump(mode="json"), key,
                       list(config.network.keep_digital))

    tasks: list[tuple[str, dict[str, Any], EvalTask]] = []
    for p in points:
        full = point_settings(p, config)
        for first, n in config.blocks():
            task = EvalTask(tuple(sorted(full.items())), first, n, config.seed,
                            tuple(config.times_s), config.rows, config.cols,
                            tuple(config.network.keep_digital),
                            calibrations[full["calibration"]], config.device)
            key = _digest("eval", software, settings, train_id(training_key(p, config)),
                          task.point, first, n, task.keep_digital,
                          task.calibration.model_dump(mode="json"))
            tasks.append((key, p, task))
    return tasks, train_id


def run_sweep(config: SweepConfig, output: str | Path, *, base: Path | None = None,
              workers: int | None = None, scheduler: str | None = None,
              progress: Progress | None = None, sweep_text: str | None = None,
              model: nn.Module | None = None, data: Dataset | None = None,
              ) -> SweepOutcome:
    """Run the sweep, keep what an earlier start finished, write ``output`` (NetCDF).

    ``base``: the sweep file's folder (relative paths in it); ``workers``: a local cluster
    of that many worker processes; ``scheduler``: the address of a running
    ``dask.distributed`` scheduler (``tcp://HOST:PORT``); neither: in this process.
    ``model``, ``data``: objects instead of the sweep's network and data sections."""
    output = Path(output)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: need at least one worker")
    points = config.points()
    if model is None or data is None:
        loaded_model, loaded_data = _network_and_data(config, base)
        model = loaded_model if model is None else model
        data = loaded_data if data is None else data
    trained_methods = sorted({setting(p, "training", config) for p in points} - {"as-is"})
    if trained_methods:
        data.require_training_split(f"the sweep's training = '{trained_methods[0]}'")
    parts = _Parts(output)
    tasks, train_id = plan(config, model, data, base)
    missing = [(k, p, t) for k, p, t in tasks if not parts.has("eval", k, ".npy")]
    needed = {training_key(p, config) for _, p, _ in missing} - {("as-is",)}
    to_train = sorted((k for k in needed if not parts.has("train", train_id(k), ".pt")),
                      key=str)
    stage1s = sorted({k[1] for k in to_train if k[0] == "full"})
    outcome = SweepOutcome(None, len(tasks), len(tasks) - len(missing), len(missing),
                           len(to_train) + len(stage1s))
    log.info("sweep: %d evaluation tasks, %d kept from an earlier start; computing %d "
             "evaluations and %d trainings", outcome.evaluations, outcome.kept,
             outcome.computed, outcome.trainings)
    from pcmlab.catalog.registration import Registration

    ids = _network_and_data_ids(model, data)
    reg = Registration.start("sweep", output, config=config.model_dump(mode="json"),
                             meta={"axes": config.axes, "tasks": len(tasks)},
                             network_fingerprint=ids["network"], data_hash=ids["data"])
    try:
        if missing:
            _compute(config, parts, model, data, missing, sorted(needed, key=str), stage1s,
                     train_id, workers, scheduler, progress)
        outcome.dataset = _assemble(config, points, tasks, parts, sweep_text)
        outcome.dataset.attrs["run_id"] = reg.run_id
        if reg.pending is not None:
            outcome.dataset.attrs["catalog_pending"] = reg.pending_record()
        _write_netcdf(outcome.dataset, output)
    except BaseException as exc:
        reg.finish("stopped" if isinstance(exc, KeyboardInterrupt) else "failed",
                   hash_file=False)
        raise
    reg.finish("finished")
    return outcome


def _compute(config: SweepConfig, parts: _Parts, model: nn.Module, data: Dataset,
             missing: list[tuple[str, dict[str, Any], EvalTask]],
             needed: list[tuple[Any, ...]], stage1s: list[float],
             train_id: Callable[[tuple[Any, ...]], str], workers: int | None,
             scheduler: str | None, progress: Progress | None) -> None:
    import torch
    from dask.distributed import as_completed

    threads = torch.get_num_threads()
    client = _client(workers, scheduler)
    try:
        # the model travels inside a dataclass, so by pickle: distributed's own serializer
        # for a bare nn.Module rebuilds its hook tables as plain dicts, which torch refuses
        base_f, data_f = client.scatter([Trained(model), data], broadcast=True)
        kinds: dict[str, tuple[str, str]] = {}  # future key -> (kind, part key)
        futures = []

        def submit(kind: str, key: str, fn: Callable[..., Any], *args: Any) -> Any:
            f = client.submit(fn, *args, key=f"{kind}-{key}", pure=False)
            kinds[f.key] = (kind, key)
            futures.append(f)
            return f

        stage1_f = {eta: submit("stage1", train_id(("stage1", eta)), stage1_task, base_f,
                                data_f, eta, config.training) for eta in stage1s}
        trained_f: dict[tuple[Any, ...], Any] = {}
        for key in needed:
            tid = train_id(key)
            if parts.has("train", tid, ".pt"):  # trained by an earlier start
                trained_f[key] = client.scatter(parts.read_trained(tid))
            else:
                trained_f[key] = submit("train", tid, train_task, base_f, data_f, key,
                                        config.training, stage1_f.get(key[1])
                                        if key[0] == "full" else None,
                                        tuple(config.network.keep_digital))
        as_is = base_f
        for ekey, point, task in missing:
            tkey = training_key(point, config)
            submit("eval", ekey, eval_task, task,
                   as_is if tkey == ("as-is",) else trained_f[tkey], data_f, config)
        done, total = 0, len(futures)
        if progress:
            progress(done, total)
        for future in as_completed(futures):
            kind, key = kinds[future.key]
            try:
                result = future.result()
            except Exception as exc:  # a task failed: say which; what is done is kept
                raise ConfigError(f"sweep task {kind} failed: {type(exc).__name__}: {exc}; "
                                  f"the tasks finished so far are kept in {parts.folder}, "
                                  "and a new start computes only the rest") from None
            if kind == "eval":
                parts.write_eval(key, result)
            elif kind == "train":
                parts.write_trained(key, result)
            done += 1
            if progress:
                progress(done, total)
    finally:
        client.close()
        cluster = getattr(client, "cluster", None)
        if cluster is not None:
            cluster.close()
        torch.set_num_threads(threads)


def _coordinate(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, bool) for v in values):
        return np.array(["on" if v else "off" for v in values])
    return np.array(values)


def _assemble(config: SweepConfig, points: list[dict[str, Any]],
              tasks: list[tuple[str, dict[str, Any], EvalTask]], parts: _Parts,
              sweep_text: str | None) -> xr.Dataset:
    import xarray as xr

    names = list(config.axes)
    shape = [len(config.axes[n]) for n in names]
    acc = np.full((*shape, config.runs, len(config.times_s)), np.nan)
    index = {json.dumps(p, sort_keys=True): np.unravel_index(i, shape) if shape else ()
             for i, p in enumerate(points)}
    for key, point, task in tasks:
        where = index[json.dumps(point, sort_keys=True)]
        acc[(*where, slice(task.first_run, task.first_run + task.runs))] = \
            parts.read_eval(key)
    dims = (*names, "run", "time")
    coords: dict[str, Any] = {n: (n, _coordinate(config.axes[n]), {"long_name": AXES[n][2]})
                              for n in names}
    coords["run"] = ("run", np.arange(config.runs))
    coords["time_s"] = ("time", np.asarray(config.times_s, dtype=np.float64),
                        {"units": "s", "long_name": "time since programming"})
    labels = dict(zip(ACCURACY_TIMES_S, ACCURACY_TIME_LABELS, strict=True))
    coords["time_label"] = ("time", np.array([labels.get(t, f"{t:g} s")
                                              for t in config.times_s]))
    ds = xr.Dataset(
        {"accuracy": (dims, acc, {"units": "1", "long_name": "test accuracy, simulated "
                                  "(Monte Carlo over the statistical PCM model)"})},
        coords=coords,
        attrs={"schema": SWEEP_SCHEMA, "pcmlab_version": __version__,
               "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "sweep": sweep_text if sweep_text is not None
               else json.dumps(config.model_dump(mode="json"), sort_keys=True),
               "sweep_json": json.dumps(config.model_dump(mode="json"), sort_keys=True),
               "seed": config.seed, "runs": config.runs,
               "fixed": json.dumps({n: setting({}, n, config) for n in AXES
                                    if n not in config.axes}, default=str)})
    return add_run_statistics(ds)


def add_run_statistics(ds: xr.Dataset) -> xr.Dataset:
    """``accuracy_mean`` and ``accuracy_std`` over runs: the std is the sample standard
    deviation (ddof=1, NaN for a single run), the spread a lab would quote for N chips."""
    ds["accuracy_mean"] = ds.accuracy.mean("run").assign_attrs(units="1",
                                                                long_name="mean over runs")
    ds["accuracy_std"] = ds.accuracy.std("run", ddof=1).assign_attrs(
        units="1", long_name="sample standard deviation over runs (ddof=1)")
    return ds


def _temporary(folder: Path, prefix: str, suffix: str) -> Path:
    """A new file name in ``folder`` for an atomic write (not created here)."""
    return folder / f"{prefix}{uuid.uuid4().hex}{suffix}"


def _write_netcdf(ds: xr.Dataset, output: Path) -> None:
    tmp = _temporary(output.parent, output.name + ".", ".tmp")  # h5py creates it: umask
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_attrs(path: str | Path) -> dict[str, Any] | None:
    """The attributes of a sweep result (NetCDF with pcmlab's sweep schema), read without
    its data; None for any other file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError:
        return None
    return attrs if attrs.get("schema") == SWEEP_SCHEMA else None


def is_sweep_file(path: str | Path) -> bool:
    """Whether ``path`` is a sweep result."""
    return sweep_attrs(path) is not None


def open_sweep(path: str | Path) -> xr.Dataset:
    """A sweep result as an xarray Dataset (read into memory)."""
    import xarray as xr

    if not is_sweep_file(path):
        raise SchemaError(f"{path}: not a pcmlab sweep result (schema {SWEEP_SCHEMA})")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def grid_rows(ds: xr.Dataset) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
    """Per grid point: its coordinates, mean and std over runs per time."""
    names = [d for d in ds.accuracy.dims if d not in ("run", "time")]
    for combo in itertools.product(*(ds[n].values.tolist() for n in names)):
        where = dict(zip(names, combo, strict=True))
        sel = ds.sel(where) if where else ds
        yield where, sel.accuracy_mean.values, sel.accuracy_std.values

