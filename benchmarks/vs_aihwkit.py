"""pcmlab's simulated mode beside IBM aihwkit on the same work: the same network, the same
PCM statistics (pcmlab's model exported to aihwkit, docs/aihwkit.md), the same runs and the
same times (25 s, 1 h, 1 day, 1 month, 1 year), and the periphery ideal on both sides
(aihwkit's default forward adds output noise and per-vector noise management that pcmlab's
periphery has not: with them the statistics would not be equal); faulty devices off in
pcmlab (aihwkit has none).
aihwkit (its torch tile) programs once per run and drifts to each time, as its inference
examples do. Prints both times, the speed-up (targets: >= 10x on the digits CNN, >= 20x
on the residual CNN) and both accuracies.

Needs the aihwkit extra: pip install -e ".[aihwkit]".
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import numpy as np
import torch
from _common import Figures, add_report_options

from examples.networks import resnet
from pcmlab.bridge.aihwkit import aihwkit_simulate, to_aihwkit
from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches, Periphery
from pcmlab.pcm_model import ACCURACY_TIMES_S as TIMES_S
from pcmlab.tasks import load_digits, reference_cnn, train_classifier


def compare(label: str, key: str, figures: Figures, model: torch.nn.Module, data,
            runs: int) -> None:
    from aihwkit.nn.conversion import convert_to_analog

    t = time.perf_counter()
    ev = AnalogEvaluator(model, data.x_train, Periphery(dac_bits=None, adc_bits=None))
    sim = ev.simulate(data.x_test, data.y_test, ev.mapping(256, 512), TIMES_S, runs,
                      np.random.default_rng(0), noise=NoiseSwitches(faults=False))
    t_pcmlab = time.perf_counter() - t
    export = to_aihwkit(perfect_periphery=True)
    t = time.perf_counter()
    analog = convert_to_analog(model, export.rpu_config)
    theirs = aihwkit_simulate(analog, data.x_test, data.y_test, TIMES_S, runs, seed=0)
    t_aihwkit = time.perf_counter() - t
    speedup = t_aihwkit / t_pcmlab
    print(f"{label}: {runs} runs x {len(TIMES_S)} times, {len(data.y_test)} test inputs")
    print(f"  pcmlab simulated : {t_pcmlab:8.2f} s   accuracy "
          + " ".join(f"{100 * a:.2f}" for a in sim.mean) + " %")
    print(f"  aihwkit (torch)  : {t_aihwkit:8.2f} s   accuracy "
          + " ".join(f"{100 * a:.2f}" for a in theirs.mean(axis=0)) + " %")
    print(f"  speed-up         : {speedup:.1f}x ({figures.add(key + '_speedup', speedup)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=25)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("vs_aihwkit.py")
    torch.set_num_threads(1)  # both tools on one core: the comparison is not about threads
    data = load_digits()
    cnn = train_classifier(reference_cnn(), data.x_train, data.y_train, epochs=20,
                           weight_noise=0.05).eval()
    compare("digits CNN", "digits", figures, cnn, data, args.runs)
    net = train_classifier(resnet(0), data.x_train, data.y_train, epochs=10,
                           weight_noise=0.05).eval()
    compare("residual CNN (examples.networks:resnet)", "residual", figures, net, data,
            args.runs)
    figures.write(args.json)


if __name__ == "__main__":
    main()
