"""The AnalogNets ablation: off-the-shelf, noise injection only and the full method, each
at several converter widths, in simulated mode at the paper's time points."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.pcm_model import ACCURACY_TIMES_S
from pcmlab.tasks import Dataset, reference_cnn, train_classifier
from pcmlab.training import TrainingConfig, train_analognets, train_clipped

log = logging.getLogger(__name__)

METHODS = ("off-the-shelf", "noise injection", "full method")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AblationRow:
    method: str
    adc_bits: int
    dac_bits: int
    mean: tuple[float, ...]  # per time point
    std: tuple[float, ...]


def run_ablation(
    data: Dataset, *, bits: tuple[int, ...] = (8, 6, 4), runs: int = 25,
    times_s: tuple[float, ...] = ACCURACY_TIMES_S, config: TrainingConfig | None = None,
    rows: int = 256, cols: int = 512, seed: int = 0, progress: Progress | None = None,
    model: nn.Module | None = None,
) -> list[AblationRow]:
    """Train the three models (the full method once per ADC width) and evaluate each in
    simulated mode: ``runs`` Monte Carlo runs per time point; the DAC one bit wider.
    ``model``: the untrained network (any nn.Module; default the digits reference CNN),
    copied for each method so that all three start from the same weights."""
    fresh = (lambda: copy.deepcopy(model)) if model is not None else (
        lambda: reference_cnn(seed))
    cfg = config or TrainingConfig(seed=seed)
    say = progress or (lambda text: None)
    epochs = cfg.stage1_epochs + cfg.stage2_epochs  # the same budget for every method
    say("training the off-the-shelf model")
    plain = train_classifier(fresh(), data.x_train, data.y_train, epochs=epochs,
                             seed=seed)
    say("training with noise injection")
    noisy = train_classifier(fresh(), data.x_train, data.y_train, epochs=epochs,
                             weight_noise=cfg.eta, seed=seed)
    say("full method, stage 1")
    stage1 = train_clipped(fresh(), data.x_train, data.y_train, cfg)
    out = []
    for b in bits:
        say(f"full method, stage 2 at {b} bits")
        full = train_analognets(stage1.model, data.x_train, data.y_train,
                                cfg.model_copy(update={"adc_bits": b}), stage1=stage1)
        periphery = Periphery(dac_bits=b + 1, adc_bits=b)
        candidates = [
            (METHODS[0], AnalogEvaluator(plain, data.x_train, periphery)),
            (METHODS[1], AnalogEvaluator(noisy, data.x_train, periphery)),
            (METHODS[2], AnalogEvaluator(full.model, data.x_train, full.periphery,
                                         ranges=full.ranges)),
        ]
        for method, ev in candidates:
            say(f"simulating {method} at {b} bits")
            need = sum(2 * math.prod(spec[3]) for spec in ev.layer_specs())
            mapping = ev.mapping(rows, cols, arrays=max(1, -(-need // (rows * cols))) + 1)
            sim = ev.simulate(data.x_test, data.y_test, mapping, times_s, runs,
                              np.random.default_rng(seed))
            out.append(AblationRow(method, b, b + 1, tuple(map(float, sim.mean)),
                                   tuple(map(float, sim.std))))
            log.info("%s, %d bits: %s", method, b, np.round(100 * sim.mean, 2))
    return out
