"""Analysis at the size of a real run: ``pcmlab.open_run`` and the per-level analyses on a
synthetic run written with the store's ``RunWriter`` (default 1 M cells x 1,000 readouts,
4 GB), each beside bare h5py + numpy computing the same figures from the same file.

Measured, each in a fresh Python process (so that peak memory is that of the work, not
of writing the file or of the other measurement), pcmlab and the baseline alternated:

- open: ``pcmlab.open_run(path)`` against h5py opening the file and reading what the
  dataset holds in memory (the per-cell arrays and the times);
- median: one level's median conductance over time (readout x cell selection), through
  the dataset, against h5py reading blocks of rows and ``numpy.median``;
- level_drift: ``pcmlab.level_drift(ds)`` against h5py + numpy: least squares of ln G on
  ln t per cell (readouts at or after t0) and each level's nu mean, median and std.

Figures: wall time of the work (not of the imports) and the process's peak resident
memory (``ru_maxrss``) above what it held after its imports. Targets: open < 1 s, peak
memory of the open < 300 MB, median within 2x of the baseline; level_drift is printed
with its ratio against the same 2x.

``--quick`` is a small run (64 k cells x 100 readouts) for a smoke test; ``--json FILE``
writes every figure (benchmarks/run_all.py collects them). The synthetic file is written
into a temporary folder and deleted afterwards (``--keep FILE`` writes it there, or
reuses it if it exists, and keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import numpy as np

LEVELS_US = (0.0, 2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0)
MEDIAN_LEVEL_US = 8.0
T0_S = 20.0
TARGETS = {"open_s": 1.0, "open_peak_mb": 300.0, "median_ratio": 2.0, "drift_ratio": 2.0}


# -- the synthetic run ----------------------------------------------------------------------
def write_run(path: Path, n_cells: int, n_readouts: int, seed: int = 0) -> float:
    """A run of ``n_cells`` x ``n_readouts`` written with RunWriter: levels programmed
    with the model's spread, about 1 % not converged, each cell drifting with its own nu
    from the model, a little read noise. Returns the seconds it took."""
    from pcmlab.pcm_model import PCMModel
    from pcmlab.store import RunWriter

    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    model = PCMModel()
    cols = 1024
    cells = np.arange(n_cells, dtype=np.uint32)
    target = np.asarray(LEVELS_US, np.float32)[cells % len(LEVELS_US)]
    times_s = np.geomspace(T0_S, 3.15e7, n_readouts)  # t0 to a year
    prog = np.maximum(target + model.prog_noise_sigma_us(target) * rng.standard_normal(
        n_cells), 0).astype(np.float32)
    nu = np.abs(rng.normal(model.drift_nu_mean(np.maximum(target, 0.1)),
                           model.drift_nu_std(np.maximum(target, 0.1)))).astype(np.float32)
    writer = RunWriter.create(
        path, config={"benchmark": "analysis"}, driver_identity="pcmlab,benchmark,0,0",
        cells=cells, target_us=target, schedule_time_s=times_s,
        geometry={"rows": -(-n_cells // cols), "cols": cols, "arrays": 1})
    with writer:
        writer.write_programming(
            conductance_us=prog, iterations=rng.integers(1, 20, n_cells),
            converged=rng.random(n_cells) > 0.01, last_pulse_s=np.zeros(n_cells),
            end_chip_time_s=0.0, interrupted=False)
        noise = np.float32(0.02)
        for t in times_s:
            drift = np.exp(-nu * np.float32(np.log(t / T0_S)))
            g = prog * drift + noise * rng.standard_normal(n_cells, dtype=np.float32)
            writer.append_readout(float(t), float(t), time.time(), np.maximum(g, 0))
    return time.perf_counter() - t_start


# -- the work, pcmlab and bare ------------------------------------------------------------
def pcmlab_open(path: str) -> object:
    import pcmlab

    return pcmlab.open_run(path)


def bare_open(path: str) -> object:
    import h5py

    f = h5py.File(path, "r")
    out = {name: f[name][...] for name in (
        "targets/cell", "targets/conductance_us", "targets/layer",
        "programming/conductance_us", "programming/iterations", "programming/converged",
        "programming/last_pulse_s", "readouts/time_s", "readouts/chip_time_s",
        "readouts/wall_time", "readouts/schedule_time_s")}
    out["levels"] = np.unique(out["targets/conductance_us"])
    out["file"] = f
    return out


def pcmlab_median(path: str) -> np.ndarray:
    import pcmlab

    with pcmlab.open_run(path) as ds:
        sel = ds.conductance_us.isel(cell=(ds.level == MEDIAN_LEVEL_US).values)
        return sel.median("cell").values


def _blocks(n: int, rows: int):
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def bare_median(path: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        sel = f["targets/conductance_us"][...] == np.float32(MEDIAN_LEVEL_US)
        g = f["readouts/conductance_us"]
        rows = max(1, (16 << 20) // (4 * g.shape[1]))  # 16 MB of rows at a time
        return np.concatenate([np.median(g[b][:, sel], axis=1)
                               for b in _blocks(g.shape[0], rows)])


def pcmlab_drift(path: str) -> np.ndarray:
    import pcmlab

    with pcmlab.open_run(path) as ds:
        return pcmlab.level_drift(ds)["nu_median"].values


def bare_drift(path: str) -> np.ndarray:
    """Per cell, the least-squares slope of ln G on ln t (readouts at or after t0, G > 0)
    from running sums over blocks of rows, then per level nu mean, median and std."""
    import h5py

    with h5py.File(path, "r") as f:
        t = f["readouts/time_s"][...]
        target = f["targets/conductance_us"][...]
        converged = f["programming/converged"][...]
        g = f["readouts/conductance_us"]
        n_cells = g.shape[1]
        sums = np.zeros((5, n_cells))  # n, Sx, Sy, Sxx, Sxy
        rows = max(1, (16 << 20) // (4 * n_cells))
        use = np.flatnonzero(t >= T0_S)
        for b in _blocks(use.size, rows):
            block = g[use[b][0]:use[b][-1] + 1].astype(np.float64)
            x = np.log(t[use[b]])[:, None]
            w = block > 0
            y = np.log(np.where(w, block, 1.0))
            sums[0] += w.sum(axis=0)
            sums[1] += (w * x).sum(axis=0)
            sums[2] += (w * y).sum(axis=0)
            sums[3] += (w * x * x).sum(axis=0)
            sums[4] += (w * x * y).sum(axis=0)
    n, sx, sy, sxx, sxy = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        nu = -(sxy - sx * sy / n) / (sxx - sx * sx / n)
    out = []
    for level in np.unique(target[target > 0]):
        sel = (target == level) & converged & np.isfinite(nu)
        out.append((nu[sel].mean(), np.median(nu[sel]), nu[sel].std()))
    return np.array(out)[:, 1]


WORK = {"open": (pcmlab_open, bare_open), "median": (pcmlab_median, bare_median),
        "level_drift": (pcmlab_drift, bare_drift)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(what: str, which: str, path: str) -> None:
    """One measurement in this fresh process; prints its figures as JSON."""
    import dask.array
    import h5py  # noqa: F401  (the imports are not the work: both sides import)
    import xarray

    import pcmlab
    import pcmlab.analysis
    import pcmlab.dataset
    import pcmlab.pcm_model
    import pcmlab.store

    pcmlab.level_drift  # noqa: B018  (resolve the lazy name outside the clock)
    # dask's scheduler and xarray's dask paths load on their first use: warm them on a
    # tiny array, so the clock holds the work (a notebook pays this once per session)
    xarray.DataArray(dask.array.ones((2, 2), chunks=1)).median("dim_1").values  # noqa: B018
    fn = WORK[what][0 if which == "pcmlab" else 1]
    before = _rss_mb()
    t = time.perf_counter()
    result = fn(path)
    seconds = time.perf_counter() - t
    peak = _rss_mb()
    value = None if isinstance(result, dict) or not isinstance(result, np.ndarray) \
        else np.asarray(result, np.float64).tolist()
    print(json.dumps({"seconds": seconds, "peak_mb": peak - before, "rss_imports_mb": before,
                      "value": value}))


def measure(what: str, which: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", what, which, str(path)],
                          capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])
                               + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if proc.returncode != 0:
        raise SystemExit(f"{what} ({which}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1 << 20)
    parser.add_argument("--readouts", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="64 k cells x 100 readouts")
    parser.add_argument("--repeats", type=int, default=2,
                        help="pairs per measurement; the best of each side is printed")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", type=Path, help="write the run here (reuse it if it "
                        "exists) and keep it")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.quick:
        args.cells, args.readouts = 1 << 16, 100
    tmp = None
    if args.keep is not None:
        path = args.keep
    else:
        tmp = Path(tempfile.mkdtemp(prefix="pcmlab-bench-analysis-"))
        path = tmp / "run.h5"
    need_gb = args.cells * args.readouts * 4 / 1e9
    try:
        if not path.exists():
            free_gb = shutil.disk_usage(path.parent).free / 1e9
            if free_gb < 2 * need_gb + 1:
                raise SystemExit(f"{path.parent}: {free_gb:.1f} GB free, the run needs "
                                 f"{need_gb:.1f} GB (and room to spare)")
            write_s = write_run(path, args.cells, args.readouts)
            print(f"wrote {path.stat().st_size / 1e9:.2f} GB ({args.cells} cells x "
                  f"{args.readouts} readouts) with RunWriter in {write_s:.1f} s")
        figures = run_all(path, args.repeats)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report(figures, args, need_gb)


def run_all(path: Path, repeats: int) -> dict:
    figures: dict = {}
    for what in WORK:
        runs: dict[str, list[dict]] = {"pcmlab": [], "bare": []}
        for _ in range(repeats):  # alternated, so both see the same machine
            for which in ("bare", "pcmlab"):
                runs[which].append(measure(what, which, path))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        p, b = best["pcmlab"], best["bare"]
        if p["value"] is not None and b["value"] is not None:  # the same figures
            np.testing.assert_allclose(p["value"], b["value"], rtol=1e-6,
                                       err_msg=f"{what}: pcmlab and bare disagree")
        figures[what] = {"pcmlab_s": p["seconds"], "bare_s": b["seconds"],
                         "ratio": p["seconds"] / b["seconds"],
                         "pcmlab_peak_mb": max(r["peak_mb"] for r in runs["pcmlab"]),
                         "bare_peak_mb": max(r["peak_mb"] for r in runs["bare"]),
                         "rss_imports_mb": p["rss_imports_mb"]}
    return figures


def report(figures: dict, args: argparse.Namespace, need_gb: float) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    load = os.getloadavg()
    print(f"run: {args.cells} cells x {args.readouts} readouts ({need_gb:.2f} GB of "
          f"conductances); best of {args.repeats} per side, each in a fresh process; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'':12} {'pcmlab':>9} {'bare':>9} {'ratio':>6} {'peak MB':>8} {'bare MB':>8}")
    for what, f in figures.items():
        print(f"{what:12} {f['pcmlab_s']:8.3f}s {f['bare_s']:8.3f}s {f['ratio']:6.2f} "
              f"{f['pcmlab_peak_mb']:8.0f} {f['bare_peak_mb']:8.0f}")
    o, m, d = figures["open"], figures["median"], figures["level_drift"]
    checks = {
        "open_s": (o["pcmlab_s"], o["pcmlab_s"] < TARGETS["open_s"]),
        "open_peak_mb": (o["pcmlab_peak_mb"], o["pcmlab_peak_mb"] < TARGETS["open_peak_mb"]),
        "median_ratio": (m["ratio"], m["ratio"] <= TARGETS["median_ratio"]),
        "drift_ratio": (d["ratio"], d["ratio"] <= TARGETS["drift_ratio"]),
    }
    print(f"open        : {o['pcmlab_s']:.3f} s (target < {TARGETS['open_s']:g} s: "
          f"{verdict(checks['open_s'][1])}), peak memory {o['pcmlab_peak_mb']:.0f} MB above "
          f"the imports' {o['rss_imports_mb']:.0f} MB (target < {TARGETS['open_peak_mb']:g}"
          f" MB: {verdict(checks['open_peak_mb'][1])})")
    print(f"median      : {m['ratio']:.2f} x bare h5py + numpy (target <= "
          f"{TARGETS['median_ratio']:g}: {verdict(checks['median_ratio'][1])})")
    print(f"level_drift : {d['ratio']:.2f} x bare h5py + numpy (target <= "
          f"{TARGETS['drift_ratio']:g}: {verdict(checks['drift_ratio'][1])})")
    if args.json is not None:  # "figures": the registry's keys (run_all.py reads them)
        flat = {"open_s": o["pcmlab_s"], "peak_mib": o["pcmlab_peak_mb"],  # ru_maxrss / 1024: MiB
                "median_ratio": m["ratio"], "level_drift_ratio": d["ratio"]}
        args.json.write_text(json.dumps({
            "script": "analysis.py", "figures": flat, "details": figures,
            "benchmark": "analysis", "cells": args.cells, "readouts": args.readouts,
            "quick": bool(args.quick), "load_average": list(load),
            "targets": {k: {"value": v, "target": TARGETS[k], "met": ok}
                        for k, (v, ok) in checks.items()}}, indent=2))


if __name__ == "__main__":
    main()
