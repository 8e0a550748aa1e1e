"""Evaluator speed: simulated mode, 25 runs x 5 time points, beside a plain-torch loop
(written here) that evaluates the same number of perturbed-weight forward passes of the
float model. Prints both times, the ratio (targets in benchmarks/registry.py: <= 1.2 on
the digits CNN, <= 1.3 on the ResNet) and the peak memory.

The floor: the simulated mode's forwards alone, with every run's and time's weights (the
PCM noise: programming, drift, read noise, drift compensation) drawn ahead of the clock,
beside the same plain-torch loop. What the ratio has above the floor is the noise draws.

Two networks: the digits reference CNN, and a ResNet-style CNN of about 390 k weights on
3 x 32 x 32 inputs (synthetic data: the speed, not the accuracy, is measured).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from _common import Figures, add_report_options

from examples.networks import ResNet
from pcmlab.analog import crossbar_parameters
from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.pcm_model import ACCURACY_TIMES_S as TIMES_S
from pcmlab.tasks import load_digits, reference_cnn, train_classifier


def plain_torch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int,
                seed: int = 0) -> float:
    """n forward passes of the float model, each with freshly perturbed weights."""
    gen = torch.Generator().manual_seed(seed)
    weights = crossbar_parameters(model)
    clean = [w.detach().clone() for w in weights]
    correct = 0
    with torch.no_grad():
        for _ in range(n):
            for w, c in zip(weights, clean, strict=True):
                w.copy_(c + 0.03 * c.abs().max() * torch.randn(c.shape, generator=gen))
            correct += int((model(x).argmax(1) == y).sum())
        for w, c in zip(weights, clean, strict=True):
            w.copy_(c)
    return correct / (n * len(y))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drawn_ahead(ev: AnalogEvaluator, mapping, runs: int, rng: np.random.Generator
                ) -> list[tuple[list[torch.Tensor], list | None]]:
    """The weights and drift-compensation factors simulated mode evaluates, every run and
    time, drawn before any forward (records what ``simulate`` passes to ``evaluate``)."""
    drawn = []
    real = ev.evaluate

    def record(x, y, weights=None, gdc=None, **kw) -> float:
        drawn.append(([w.clone() for w in weights], gdc))
        return 0.0

    ev.evaluate = record  # type: ignore[method-assign]
    try:
        ev.simulate(None, None, mapping, TIMES_S, runs, rng)
    finally:
        ev.evaluate = real  # type: ignore[method-assign]
    return drawn


def compare(label: str, key: str, figures: Figures, model: torch.nn.Module,
            x_cal: torch.Tensor, x: torch.Tensor, y: torch.Tensor, runs: int, repeats: int,
            rows: int, cols: int) -> None:
    ev = AnalogEvaluator(model, x_cal, Periphery())
    mapping = ev.mapping(rows, cols)
    n = runs * len(TIMES_S)
    n_weights = sum(lm.n_weights for lm in mapping.layers)
    t_eval, t_plain, t_floor = [], [], []
    for k in range(repeats):  # interleaved
        t = time.perf_counter()
        sim = ev.simulate(x, y, mapping, TIMES_S, runs, np.random.default_rng(k))
        t_eval.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_torch(model.eval(), x, y, n, seed=k)
        t_plain.append(time.perf_counter() - t)
        ahead = drawn_ahead(ev, mapping, runs, np.random.default_rng(k))
        t = time.perf_counter()
        for weights, gdc in ahead:
            ev.evaluate(x, y, weights, gdc)
        t_floor.append(time.perf_counter() - t)
    te, tp, tf = min(t_eval), min(t_plain), min(t_floor)
    print(f"{label}: {n_weights} weights in {len(mapping.layers)} matrices, {len(y)} inputs, "
          f"{runs} runs x {len(TIMES_S)} times = {n} forward passes (best of {repeats})")
    print(f"  simulated mode : {te:.3f} s  ({te / n * 1e3:.2f} ms per pass; metric at 1 year "
          f"{100 * sim.mean[-1]:.2f} ± {100 * sim.std[-1]:.2f} %)")
    print(f"  plain torch    : {tp:.3f} s  ({tp / n * 1e3:.2f} ms per pass)")
    print(f"  ratio          : {te / tp:.2f}  ({figures.add(key + '_ratio', te / tp)}); peak "
          f"RSS of the process so far {peak_rss_mib():.0f} MiB")
    print(f"  floor          : {tf:.3f} s  the same forwards, the noise drawn ahead: ratio "
          f"{tf / tp:.2f} ({figures.add(key + '_floor', tf / tp)}); the noise draws cost "
          f"{te - tf:+.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=32, help="ResNet inputs per pass")
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("evaluator.py")
    torch.set_num_threads(1)  # both sides on one core: the comparison is not about threads
    data = load_digits()
    model = train_classifier(reference_cnn(), data.x_train, data.y_train, epochs=20,
                             weight_noise=0.05).eval()
    compare("digits CNN", "digits", figures, model, data.x_train, data.x_test, data.y_test,
            args.runs, args.repeats, 256, 512)
    torch.manual_seed(0)
    resnet = ResNet(channels=(24, 48, 96), in_channels=3).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    compare("ResNet 3x32x32", "resnet", figures, resnet,
            torch.rand(128, 3, 32, 32, generator=gen), x, y, args.runs, args.repeats, 1024,
            2048)
    figures.write(args.json)


if __name__ == "__main__":
    main()
