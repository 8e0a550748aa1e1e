"""Evaluator speed: simulated mode, 25 runs x 5 time points on the reference task, beside
a plain-torch loop (written here) that evaluates the same number of perturbed-weight
forward passes. Prints both times and the ratio. Target: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import numpy as np
import torch

from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.pcm_model import ACCURACY_TIMES_S as TIMES_S
from pcmlab.tasks import load_digits, reference_cnn, train_classifier


def plain_torch(model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, n: int,
                seed: int = 0) -> float:
    """n forward passes of the float model, each with freshly perturbed weights."""
    gen = torch.Generator().manual_seed(seed)
    layers = [m for m in model if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    clean = [m.weight.detach().clone() for m in layers]
    correct = 0
    with torch.no_grad():
        for _ in range(n):
            for m, w in zip(layers, clean, strict=True):
                m.weight.copy_(w + 0.03 * w.abs().max() * torch.randn(w.shape, generator=gen))
            correct += int((model(x).argmax(1) == y).sum())
        for m, w in zip(layers, clean, strict=True):
            m.weight.copy_(w)
    return correct / (n * len(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # both sides on one core: the comparison is not about threads
    data = load_digits()
    model = train_classifier(reference_cnn(), data.x_train, data.y_train, epochs=20,
                             weight_noise=0.05).eval()
    ev = AnalogEvaluator(model, data.x_train, Periphery())
    mapping = ev.mapping(256, 512)
    n = args.runs * len(TIMES_S)
    t_eval, t_plain = [], []
    for k in range(args.repeats):  # interleaved
        t = time.perf_counter()
        sim = ev.simulate(data.x_test, data.y_test, mapping, TIMES_S, args.runs,
                          np.random.default_rng(k))
        t_eval.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_torch(ev.model, data.x_test, data.y_test, n, seed=k)
        t_plain.append(time.perf_counter() - t)
    te, tp = min(t_eval), min(t_plain)
    print(f"reference task: digits CNN, {len(data.y_test)} test images, {args.runs} runs x "
          f"{len(TIMES_S)} time points = {n} forward passes (best of {args.repeats})")
    print(f"simulated mode : {te:.3f} s  ({te / n * 1e3:.2f} ms per pass; accuracy at 1 year "
          f"{100 * sim.mean[-1]:.2f} ± {100 * sim.std[-1]:.2f} %)")
    print(f"plain torch    : {tp:.3f} s  ({tp / n * 1e3:.2f} ms per pass)")
    verdict = "met" if te / tp <= 1.5 else "MISSED"
    print(f"ratio          : {te / tp:.2f}  (target <= 1.5: {verdict})")


if __name__ == "__main__":
    main()
