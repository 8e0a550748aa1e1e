"""The AnalogNets ablation, a preset of the sweep: off-the-shelf, noise injection only and
the full method, each at several converter widths, in simulated mode at the paper's time
points (``pcmlab ablation``; the same grid as a sweep file: docs/sweeps.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pcmlab.pcm_model import ACCURACY_TIMES_S
from pcmlab.sweep import Progress, SweepConfig, run_sweep
from pcmlab.tasks import Dataset, reference_cnn
from pcmlab.training import TrainingConfig

log = logging.getLogger(__name__)

# the ablation's names for the sweep's methods
METHODS = {"off-the-shelf": "off-the-shelf", "noise": "noise injection",
           "full": "full method"}


@dataclass(frozen=True)
class AblationRow:
    method: str
    adc_bits: int
    dac_bits: int
    mean: tuple[float, ...]  # per time point
    std: tuple[float, ...]


def ablation_sweep(*, bits: tuple[int, ...] = (8, 6, 4), runs: int = 25,
                   times_s: tuple[float, ...] = ACCURACY_TIMES_S,
                   config: TrainingConfig | None = None, rows: int = 256, cols: int = 512,
                   seed: int = 0) -> SweepConfig:
    """The ablation as a sweep: axes bits (ADC; the DAC one more) x training method."""
    return SweepConfig(training=config or TrainingConfig(seed=seed),
                       axes={"bits": list(bits), "training": list(METHODS)},
                       times_s=times_s, runs=runs, runs_per_task=max(1, -(-runs // 5)),
                       seed=seed, rows=rows, cols=cols)


def run_ablation(
    data: Dataset, output: str | Path, *, bits: tuple[int, ...] = (8, 6, 4), runs: int = 25,
    times_s: tuple[float, ...] = ACCURACY_TIMES_S, config: TrainingConfig | None = None,
    rows: int = 256, cols: int = 512, seed: int = 0, progress: Progress | None = None,
    model: nn.Module | None = None, workers: int | None = None,
) -> list[AblationRow]:
    """Train the three models (the full method once per ADC width; the same epochs for
    all) and evaluate each in simulated mode, ``runs`` Monte Carlo runs per time point;
    the sweep's dataset goes to ``output`` (NetCDF). ``model``: the untrained network (any
    nn.Module; default the digits reference CNN): all three start from its weights."""
    sweep = ablation_sweep(bits=bits, runs=runs, times_s=times_s, config=config, rows=rows,
                           cols=cols, seed=seed)
    outcome = run_sweep(sweep, output, model=model if model is not None
                        else reference_cnn(seed), data=data, progress=progress,
                        workers=workers)
    ds = outcome.dataset
    out = []
    for b in bits:
        for method, name in METHODS.items():
            sel = ds.sel(bits=b, training=method)
            out.append(AblationRow(name, b, b + 1, tuple(map(float, sel.accuracy_mean)),
                                   tuple(map(float, sel.accuracy_std))))
    return out
