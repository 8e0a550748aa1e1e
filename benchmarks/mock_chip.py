"""Mock-chip speed: 20 rounds of (SET every cell, read every cell) on 512 x 2048.

Prints the time, cell-pulses per second and the ratio to a bare-numpy loop of comparable
arithmetic timed in the same run. Target: ratio <= 4.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_of, numpy_reference

from mock_chip import MockChip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    chip = MockChip(geometry={"rows": args.rows, "cols": args.cols}, seed=0)
    n = chip.n_cells
    cells = np.arange(n, dtype=np.uint32)

    def chip_rounds() -> None:
        for _ in range(args.rounds):
            chip.apply_pulses(cells, "SET", 120.0, 500.0)
            chip.read()

    t_chip = best_of(chip_rounds)
    t_ref = best_of(numpy_reference(n, args.rounds))
    pulses = n * args.rounds
    ratio = t_chip / t_ref
    print(f"array {args.rows} x {args.cols} = {n} cells, {args.rounds} rounds of SET + read")
    print(f"mock chip       : {t_chip:.3f} s  ({pulses / t_chip / 1e6:.1f} M cell-pulses/s, "
          f"{t_chip / args.rounds * 1e3:.1f} ms per round)")
    print(f"numpy reference : {t_ref:.3f} s  (draw N normals + update N floats per round)")
    print(f"ratio           : {ratio:.2f}  (target <= 4: {'met' if ratio <= 4 else 'MISSED'})")


if __name__ == "__main__":
    main()
