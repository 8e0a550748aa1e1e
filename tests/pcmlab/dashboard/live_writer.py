"""A run written by another process, one readout per line read on stdin (tests and
benchmarks/dashboard.py). Synthetic conductances from the calibrated model, written
through pcmlab's own RunWriter (SWMR, each row flushed).

    python live_writer.py FILE --rows R --cols C --readouts N --first K
prints ``ready RUN_ID`` once K readouts are in the file, then for every line read on stdin
appends the next readout and prints ``{"index": i, "flushed": unix_time}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from pcmlab.pcm_model import PCMModel
from pcmlab.store import RunWriter

LEVELS_US = np.array([0.0, 5.0, 10.0, 15.0, 20.0], dtype=np.float32)


def create(path, *, rows: int = 64, cols: int = 128, readouts: int = 8, seed: int = 0):
    """A new run file, programmed; (writer, append(i)) to add readout i."""
    n = rows * cols
    cells = np.arange(n, dtype=np.uint32)
    target = LEVELS_US[cells % LEVELS_US.size]
    schedule = np.geomspace(20.0, 20.0 * 10 ** (readouts / 4), readouts)
    model = PCMModel()
    rng = np.random.default_rng(seed)
    g_prog = model.program(target, rng).astype(np.float32)
    nu = model.sample_nu(target, rng).astype(np.float32)
    w = RunWriter.create(path, config={"synthetic": True}, driver_identity="test,Synthetic,"
                         "1,0", cells=cells, target_us=target, schedule_time_s=schedule,
                         geometry={"rows": rows, "cols": cols, "arrays": 1})
    w.write_programming(conductance_us=g_prog, iterations=np.full(n, 3, np.uint16),
                        converged=np.ones(n, bool), last_pulse_s=np.zeros(n),
                        end_chip_time_s=0.0, interrupted=False)

    def append(i: int) -> None:
        g = model.drift(g_prog, nu, float(schedule[i])).astype(np.float32)
        w.append_readout(float(schedule[i]), float(schedule[i]), time.time(), g)

    return w, append


def write_run(path, *, readouts: int = 3, **options: int) -> str:
    """A finished run file, in this process (registered where PCMLAB_CATALOG says); its
    run id."""
    w, append = create(path, readouts=readouts, **options)
    for i in range(readouts):
        append(i)
    w.close()
    return w.run_id


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cols", type=int, default=128)
    p.add_argument("--readouts", type=int, default=8)
    p.add_argument("--first", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    w, append = create(a.path, rows=a.rows, cols=a.cols, readouts=a.readouts, seed=a.seed)

    for i in range(a.first):
        append(i)
    print("ready", w.run_id, flush=True)
    for i in range(a.first, a.readouts):
        if not sys.stdin.readline():
            break
        append(i)
        print(json.dumps({"index": i, "flushed": time.time()}), flush=True)
    sys.stdin.readline()  # stays open (a live writer) until told to end
    w.close()


if __name__ == "__main__":
    main()
