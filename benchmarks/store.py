"""Measurement-store speed: 50 full-array readouts (512 x 2048 float32) appended through
``RunWriter`` and through bare h5py appends of the same data, in the same run.

Only the appends are timed (both files are created, SWMR on, before the clock starts).
Prints MB/s for both and the ratio. Target: store >= 0.5 x bare h5py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import h5py
import numpy as np
from _common import Figures, add_report_options

from pcmlab.store import RunWriter


def bare_h5py(path: Path, rows: np.ndarray) -> float:
    """Resize + write + flush per row, one row per chunk, SWMR on; appends timed."""
    n = rows.shape[1]
    with h5py.File(path, "w", libver="latest") as f:
        g = f.create_dataset("g", shape=(0, n), maxshape=(None, n), chunks=(1, n), dtype="f4")
        ts = f.create_dataset("t", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="f8")
        f.swmr_mode = True
        t = time.perf_counter()
        for i, row in enumerate(rows):
            g.resize(i + 1, axis=0)
            g[i] = row
            g.flush()
            ts.resize((i + 1,))
            ts[i] = float(i)
            ts.flush()
        return time.perf_counter() - t


def store(path: Path, rows: np.ndarray) -> float:
    n = rows.shape[1]
    writer = RunWriter.create(path, config={}, driver_identity="benchmark",
                              cells=np.arange(n), target_us=np.zeros(n),
                              schedule_time_s=np.arange(1, rows.shape[0] + 1, dtype=float))
    with writer:
        t = time.perf_counter()
        for i, row in enumerate(rows):
            writer.append_readout(float(i + 1), float(i + 1), time.time(), row)
        return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--readouts", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("store.py")
    n = args.rows * args.cols
    rng = np.random.default_rng(0)
    rows = rng.uniform(0, 25, (args.readouts, n)).astype(np.float32)
    mb = rows.nbytes / 1e6
    t_bare, t_store = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):  # interleaved, so both see the same disk conditions
            t_bare.append(bare_h5py(Path(tmp) / f"bare{k}.h5", rows))
            t_store.append(store(Path(tmp) / f"store{k}.h5", rows))
            for p in Path(tmp).iterdir():
                p.unlink()
    tb, ts = min(t_bare), min(t_store)
    ratio = (mb / ts) / (mb / tb)
    print(f"{args.readouts} readouts of {args.rows} x {args.cols} float32 = {mb:.0f} MB "
          f"(best of {args.repeats})")
    print(f"bare h5py   : {tb:.2f} s  {mb / tb:7.0f} MB/s")
    print(f"RunWriter   : {ts:.2f} s  {mb / ts:7.0f} MB/s")
    print(f"ratio       : {ratio:.2f} of bare h5py ({figures.add('ratio', ratio)})")
    figures.write(args.json)


if __name__ == "__main__":
    main()
