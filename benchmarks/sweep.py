"""Sweep engine speed on this machine, all in one run on the same sweep:

- the bare computation: the sweep's task functions called one after another in this
  process, no Dask (the baseline);
- the engine in this process (the default: one Dask worker thread);
- a local cluster of 1 and of 2 worker processes (``--workers``), start-up included.

Prints the speed-up of 2 workers over 1 (bar: at least 1.6x on 2 cores) and the engine's
overhead per task beside the bare computation (bar: under 10 %). The bare computation and
the engine are both warmed first (imports, torch kernels, the Dask cluster: a small sweep
through each, not timed), then timed in alternating pairs (bare first in one pair, the
engine first in the next, so a drift of the machine's load hits both alike); the overhead
is the median over the pairs. The clusters are one wall-clock run each, start-up included.
The results of all four are checked to be identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# a worker process Dask spawns imports this script again, without its folder on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import Figures, add_report_options

from pcmlab.sweep import (
    EvalTask,
    SweepConfig,
    Trained,
    eval_task,
    point_settings,
    run_sweep,
    train_task,
    training_key,
)
from pcmlab.tasks import load_digits, reference_cnn


def bare(config: SweepConfig) -> tuple[float, np.ndarray]:
    """The sweep's trainings and evaluations, called directly in order."""
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    data = load_digits(seed=config.data.seed)
    base = Trained(reference_cnn(config.training.seed))
    trained = {}
    for p in config.points():
        key = training_key(p, config)
        if key not in trained:
            trained[key] = train_task(base, data, key, config.training)
    from pcmlab.pcm_model import PCMCalibration

    out = []
    for p in config.points():
        full = point_settings(p, config)
        for first, n in config.blocks():
            task = EvalTask(tuple(sorted(full.items())), first, n, config.seed,
                            tuple(config.times_s), config.rows, config.cols, (),
                            PCMCalibration())
            out.append(eval_task(task, trained[training_key(p, config)], data, config))
    return time.perf_counter() - t, np.concatenate(out)


def timed_sweep(config: SweepConfig, folder: Path, name: str, workers: int | None
                ) -> tuple[float, np.ndarray]:
    out = folder / f"{name}.nc"
    shutil.rmtree(folder / f"{name}.nc.parts", ignore_errors=True)
    t = time.perf_counter()
    outcome = run_sweep(config, out, workers=workers)
    elapsed = time.perf_counter() - t
    return elapsed, outcome.dataset.accuracy.values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=8, help="runs per point")
    parser.add_argument("--pairs", type=int, default=3, help="timed (bare, engine) pairs")
    parser.add_argument("--quick", action="store_true", help="a smaller sweep: 8 points "
                        "(no read-noise axis) of one block of 4 runs")
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("sweep.py")
    spec = {"runs": args.runs, "runs_per_task": 4, "seed": 1,
            "times_s": [25.0, 3600.0, 86400.0, 2592000.0, 31536000.0],
            "training": {"stage1_epochs": 4, "stage2_epochs": 0},
            "axes": {"bits": [8, 6, 4, 3], "drift_compensation": [True, False],
                     "read_noise": [True, False]}}
    if args.quick:
        spec = {**spec, "runs": 4, "axes": {k: v for k, v in spec["axes"].items()
                                            if k != "read_noise"}}
    config = SweepConfig.model_validate(spec)
    warm = SweepConfig.model_validate({**spec, "runs": 4, "axes": {"bits": [8, 4]}})
    n_eval = len(config.points()) * len(config.blocks())
    n_tasks = n_eval + 1  # and one training
    print(f"sweep: {len(config.points())} points x {len(config.blocks())} blocks of "
          f"{config.runs_per_task} runs = {n_eval} evaluation tasks + 1 training, digits CNN; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bare(warm)  # both warmed: imports, torch kernels, Dask and its in-process cluster
        timed_sweep(warm, folder, "warm", None)
        t_bares, t_procs = [], []
        for i in range(args.pairs):
            order = ("bare", "engine") if i % 2 == 0 else ("engine", "bare")
            for which in order:
                if which == "bare":
                    t, acc_bare = bare(config)
                    t_bares.append(t)
                else:
                    t, acc_proc = timed_sweep(config, folder, "in-process", None)
                    t_procs.append(t)
            print(f"  pair {i + 1} ({order[0]} first): bare {t_bares[-1]:.2f} s, engine "
                  f"{t_procs[-1]:.2f} s ({100 * (t_procs[-1] - t_bares[-1]) / t_bares[-1]:+.1f}"
                  " %)")
        t_one, acc_one = timed_sweep(config, folder, "one", 1)
        t_two, acc_two = timed_sweep(config, folder, "two", 2)
    same = (np.array_equal(acc_proc, acc_one) and np.array_equal(acc_one, acc_two)
            and np.array_equal(acc_bare, acc_one.reshape(acc_bare.shape)))
    t_bare, t_proc = float(np.median(t_bares)), float(np.median(t_procs))
    over = float(np.median([(e - b) / b for b, e in zip(t_bares, t_procs, strict=True)]))
    print(f"  bare task functions, in order : {t_bare:7.2f} s  median of {args.pairs} "
          f"({1e3 * t_bare / n_tasks:.0f} ms per task)")
    print(f"  engine, in this process       : {t_proc:7.2f} s  median of {args.pairs}; "
          f"overhead (median of the pairs) {1e3 * over * t_bare / n_tasks:+.1f} ms per task, "
          f"{100 * over:+.1f} % ({figures.add('overhead_pct', 100 * over)})")
    print(f"  local cluster, 1 worker       : {t_one:7.2f} s  "
          f"({100 * (t_one - t_bare) / t_bare:+.1f} % beside bare, worker start-up included)")
    print(f"  local cluster, 2 workers      : {t_two:7.2f} s")
    ratio = t_one / t_two
    print(f"  speed-up 2 workers over 1     : {ratio:.2f}x ({figures.add('speedup', ratio)})")
    print(f"  identical numbers in all four : {same}; load average after "
          f"{os.getloadavg()[0]:.2f}")
    figures.write(args.json)


if __name__ == "__main__":
    main()
