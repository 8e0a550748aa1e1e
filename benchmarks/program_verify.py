"""Program-and-verify speed: 512 x 2048 cells, uniform random targets 0-25 µS, MockDriver.

Prints the wall time, the iteration histogram, the convergence and the ratio to the
bare-numpy reference loop of the mock-chip benchmark (20 x: N normals + N-float update)
timed in the same run. Targets (benchmarks/registry.py): whole array <= 3 s, ratio <= 3.
The chip's virtual clock does not move (operation times zero, stated here).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import Figures, add_report_options, cpu_best_of, numpy_reference, zero_timing

from drivers import MockDriver
from mock_chip import MockChipConfig
from protocols import program_and_verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("program_verify.py")
    n = args.rows * args.cols
    target = np.random.default_rng(0).uniform(0, 25, n).astype(np.float32)
    cells = np.arange(n, dtype=np.uint32)

    times, cpu_times, ref_times, result = [], [], [], None
    ref = numpy_reference(n, 20)
    for i in range(args.repeats):  # interleaved with the reference: both see the same load
        ref_times.append(cpu_best_of(ref, 1))
        driver = MockDriver(config=MockChipConfig(
            geometry={"rows": args.rows, "cols": args.cols}, seed=i, timing=zero_timing()))
        t, c = time.perf_counter(), time.thread_time()
        result = program_and_verify(driver, cells, target)
        cpu_times.append(time.thread_time() - c)
        times.append(time.perf_counter() - t)
    t_pv = min(times)
    t_ref, c_ref = min(w for w, _ in ref_times), min(c for _, c in ref_times)
    assert result is not None
    ratio = t_pv / t_ref
    print(f"program-and-verify of {args.rows} x {args.cols} = {n} cells, uniform 0-25 µS, "
          f"MockDriver (best of {args.repeats}, interleaved)")
    print(f"wall time        : {t_pv:.2f} s  ({figures.add('wall_s', t_pv)})")
    print(f"driver calls     : {result.n_driver_calls}")
    nonzero = result.target_us > 0
    print(f"converged        : {100 * result.converged.mean():.3f} % of all cells, "
          f"{100 * result.converged_fraction_nonzero:.3f} % of non-zero "
          f"({figures.add('converged_pct', 100 * result.converged_fraction_nonzero)})")
    hist = np.bincount(result.iterations, minlength=int(result.iterations.max()) + 1)
    print("iterations       : " + "  ".join(f"{i}:{c}" for i, c in enumerate(hist) if c))
    print(f"iterations p50/p90/max (non-zero): {np.percentile(result.iterations[nonzero], 50):.0f}"
          f" / {np.percentile(result.iterations[nonzero], 90):.0f}"
          f" / {result.iterations[nonzero].max()}")
    print(f"numpy reference  : {t_ref:.3f} s  (20 x: N normals + N-float update)")
    print(f"ratio            : {ratio:.2f}  ({figures.add('ratio', ratio)}); CPU time "
          f"{min(cpu_times):.3f} s vs {c_ref:.3f} s: {min(cpu_times) / c_ref:.2f} "
          f"({figures.add('ratio_cpu', min(cpu_times) / c_ref)})")
    figures.write(args.json)


if __name__ == "__main__":
    main()
