"""Mock-chip speed: 20 rounds of (SET every cell, read every cell) on 512 x 2048.

Prints the time, cell-pulses per second and the ratio to a bare-numpy loop of comparable
arithmetic timed in the same run (target in benchmarks/registry.py: ratio <= 3), in wall
time and in CPU time (the steadier figure on a shared machine). The chip's virtual clock
does not move (operation times zero, stated here, whatever the chip's default): the
figure is the pulse-and-read machinery. Beside it, the same rounds with operation times
on the clock, for information: reads then see aged devices (relaxation, 1/f noise terms
with memory), more physics per read.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import Figures, add_report_options, cpu_best_of, numpy_reference, zero_timing

from mock_chip import MockChip
from mock_chip.chip import OperationTimes

TIMED = OperationTimes(pulse_call_s=1e-3, pulse_per_cell_s=1e-8, read_call_s=1e-3,
                       read_per_cell_s=1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("mock_chip.py")

    def rounds_of(timing: OperationTimes):
        chip = MockChip(geometry={"rows": args.rows, "cols": args.cols}, seed=0,
                        timing=timing)
        cells = np.arange(chip.n_cells, dtype=np.uint32)

        def chip_rounds() -> None:
            for _ in range(args.rounds):
                chip.apply_pulses(cells, "SET", 120.0, 500.0)
                chip.read()

        return chip_rounds

    n = args.rows * args.cols
    ref = numpy_reference(n, args.rounds)
    chip_rounds, timed_rounds = rounds_of(zero_timing()), rounds_of(TIMED)
    runs = {"chip": [], "ref": [], "timed": []}
    for _ in range(args.repeats):  # interleaved: all three see the same load
        runs["chip"].append(cpu_best_of(chip_rounds, 1))
        runs["ref"].append(cpu_best_of(ref, 1))
        runs["timed"].append(cpu_best_of(timed_rounds, 1))
    (t_chip, c_chip), (t_ref, c_ref), (t_timed, _) = (
        (min(w for w, _ in v), min(c for _, c in v)) for v in runs.values())
    pulses = n * args.rounds
    print(f"array {args.rows} x {args.cols} = {n} cells, {args.rounds} rounds of SET + read "
          f"(best of {args.repeats}, interleaved)")
    print(f"mock chip       : {t_chip:.3f} s wall, {c_chip:.3f} s CPU  ({pulses / t_chip / 1e6:.1f}"
          f" M cell-pulses/s, {t_chip / args.rounds * 1e3:.1f} ms per round)")
    print(f"numpy reference : {t_ref:.3f} s wall, {c_ref:.3f} s CPU  (draw N normals + update "
          "N floats per round)")
    print(f"ratio           : {t_chip / t_ref:.2f} wall ({figures.add('ratio', t_chip / t_ref)})"
          f", {c_chip / c_ref:.2f} CPU")
    figures.add("ratio_cpu", c_chip / c_ref)
    print(f"with operation times on the clock ({TIMED.pulse_call_s * 1e3:g} ms per call + "
          f"{TIMED.pulse_per_cell_s * 1e9:g} ns per cell): {t_timed:.3f} s wall, "
          f"ratio {t_timed / t_ref:.2f} ({figures.add('timed_ratio', t_timed / t_ref)})")
    figures.write(args.json)


if __name__ == "__main__":
    main()
