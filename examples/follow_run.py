"""Follow a run from a second process while it is being written (HDF5 SWMR).

    pcmlab run examples/run.toml -o drift.h5 &
    python examples/follow_run.py drift.h5
"""

from __future__ import annotations

import sys
import time

import numpy as np

from pcmlab.store import RunReader


def follow(path: str, timeout_s: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:  # the file appears when the run starts
        try:
            run = RunReader(path)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with run:
        seen = 0
        planned = run.schedule_time_s.size
        while seen < planned and time.monotonic() < deadline:
            run.refresh()
            n = run.n_readouts
            for i in range(seen, n):
                row = run.readouts(i, i + 1)
                g = row.conductance_us[0]
                print(f"readout {i + 1}/{planned} at {row.time_s[0]:10.1f} s: "
                      f"mean {np.mean(g):6.2f} µS")
            seen = n
            time.sleep(0.5)


if __name__ == "__main__":
    follow(sys.argv[1])
