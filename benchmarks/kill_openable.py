"""How often a run SIGKILLed at a random moment leaves a file that opens without
``pcmlab recover``: plain ``h5py.File(path, "r")``, xarray (h5netcdf) and
``pcmlab.open_run``.

A child process writes a run with ``RunWriter`` as a protocol does: programming (0.3 s
of wall time, the file open), then readouts 2 s apart on the schedule, taken 0.5 s apart
on the wall clock (a compressed drift run). It is killed at a moment drawn uniformly over
its run. Prints the counts out of ``--kills``. Run it with another checkout first on
PYTHONPATH to get the figure before a change.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import numpy as np

WRITER = """
import sys, time
import numpy as np
from pcmlab.store import RunWriter
path, n_cells, n_readouts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
schedule = 2.0 * np.arange(1, n_readouts + 1)
w = RunWriter.create(path, config={}, driver_identity="kill,bench,1,fw",
                     cells=np.arange(n_cells), target_us=np.ones(n_cells),
                     schedule_time_s=schedule, register=False)
print("created", flush=True)
time.sleep(0.3)  # programming
w.write_programming(conductance_us=np.ones(n_cells), iterations=np.ones(n_cells),
                    converged=np.ones(n_cells, bool), last_pulse_s=np.zeros(n_cells),
                    end_chip_time_s=0.0, interrupted=False)
rng = np.random.default_rng(0)
for i, t in enumerate(schedule):
    time.sleep(0.5)
    w.append_readout(float(t), float(t), time.time(),
                     rng.uniform(0, 25, n_cells).astype(np.float32))
w.close()
"""


def opens(path: Path) -> dict[str, bool]:
    import h5py
    import xarray as xr

    import pcmlab

    out = {}
    try:
        with h5py.File(path, "r"):
            out["h5py"] = True
    except OSError:
        out["h5py"] = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xr.open_dataset(path, group="readouts", engine="h5netcdf").close()
        out["xarray"] = True
    except OSError:
        out["xarray"] = False
    try:
        pcmlab.open_run(path).close()
        out["open_run"] = True
    except Exception:  # any failure counts as not openable
        out["open_run"] = False
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--cells", type=int, default=65536)
    parser.add_argument("--readouts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    duration_s = 0.3 + 0.5 * args.readouts
    counts = {"h5py": 0, "xarray": 0, "open_run": 0}
    killed = 0
    env = {**os.environ, "PCMLAB_CATALOG": "off"}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.kills):
            path = Path(tmp) / f"run{k}.h5"
            child = subprocess.Popen([sys.executable, "-c", WRITER, str(path),
                                      str(args.cells), str(args.readouts)],
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=tmp)
            assert child.stdout is not None and child.stdout.readline().strip() == "created"
            time.sleep(float(rng.uniform(0, duration_s)))
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.returncode != -signal.SIGKILL:
                continue  # it finished first
            killed += 1
            for name, ok in opens(path).items():
                counts[name] += ok
    print(f"{killed} runs killed at random moments ({args.cells} cells, {args.readouts} "
          "readouts)")
    for name, n in counts.items():
        print(f"  opens with {name:9s}: {n} of {killed}")


if __name__ == "__main__":
    main()
