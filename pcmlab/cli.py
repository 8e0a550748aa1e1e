"""The ``pcmlab`` command line: the composition root wiring driver, protocol and store.

Only this module prints (through rich); user mistakes end in a one-line error and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pcmlab import __version__
from pcmlab.analysis import LevelStats, convergence_by_level
from pcmlab.config import ArrayGeometry, load_model, validate_model
from pcmlab.errors import ConfigError, PcmlabError
from pcmlab.pcm_model import PCMModel

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("pcmlab")

EXIT_USAGE = 2


# -- shared pieces -------------------------------------------------------------------------
def _add_chip_options(p: argparse.ArgumentParser, rows: int, cols: int) -> None:
    g = p.add_argument_group("mock chip")
    g.add_argument("--chip", type=Path, metavar="FILE",
                   help="mock chip configuration (.toml or .json, MockChipConfig)")
    g.add_argument("--rows", type=int, default=rows, help=f"array rows (default {rows})")
    g.add_argument("--cols", type=int, default=cols, help=f"array columns (default {cols})")
    g.add_argument("--seed", type=int, default=0, help="seed of the mock chip (default 0)")
    g.add_argument("--no-faults", action="store_true", help="a chip without faulty devices")


def _driver_for_run(config, source: str):  # (RunConfig) -> CrossbarDriver
    """The driver a run's configuration names."""
    from drivers.mock import MockDriver
    from mock_chip import MockChipConfig

    if config.resource != "mock":
        raise ConfigError(f"{source}: resource '{config.resource}' is not supported yet; "
                          "use resource = 'mock'")
    return MockDriver(config=validate_model(MockChipConfig, config.chip, f"{source} [chip]"))


def _make_mock_driver(args: argparse.Namespace):  # -> MockDriver
    from drivers.mock import MockDriver
    from mock_chip import FaultRates, MockChipConfig

    if args.chip is not None:
        cfg = load_model(MockChipConfig, args.chip)
    else:
        data: dict[str, object] = {
            "geometry": validate_model(ArrayGeometry, {"rows": args.rows, "cols": args.cols},
                                       "--rows/--cols"),
            "seed": args.seed,
        }
        if args.no_faults:
            data["faults"] = FaultRates.none()
        cfg = validate_model(MockChipConfig, data, "mock chip options")
    return MockDriver(config=cfg)


def _program_config(args: argparse.Namespace):  # -> ProgramVerifyConfig
    from protocols.program_verify import ProgramVerifyConfig

    data: dict[str, object] = {}
    if args.pv_config is not None:
        data = load_model(ProgramVerifyConfig, args.pv_config).model_dump()
    for opt, name in (("tolerance_abs", "tolerance_abs_us"), ("tolerance_rel", "tolerance_rel"),
                      ("max_iterations", "max_iterations"), ("gain", "gain_ua_per_us")):
        value = getattr(args, opt)
        if value is not None:
            data[name] = value
    return validate_model(ProgramVerifyConfig, data, "program-and-verify settings")


def _add_program_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("program-and-verify")
    g.add_argument("--pv-config", type=Path, metavar="FILE",
                   help="program-and-verify settings (.toml or .json)")
    g.add_argument("--tolerance-abs", type=float, metavar="US", help="window, fixed part (µS)")
    g.add_argument("--tolerance-rel", type=float, metavar="FRAC", help="window, share of G_T")
    g.add_argument("--max-iterations", type=int, metavar="N")
    g.add_argument("--gain", type=float, metavar="UA_PER_US", help="feedback gain (µA/µS)")


def _run_program(driver, cells, targets, cfg):  # -> ProgramResult
    from protocols.program_verify import ProgramProgress, program_and_verify

    with Progress(TextColumn("[bold]program-and-verify"), BarColumn(),
                  TextColumn("{task.fields[conv]}"), TextColumn("iteration {task.completed}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("pv", total=cfg.max_iterations, conv="")

        def on_progress(p: ProgramProgress) -> None:
            bar.update(task, completed=p.iteration,
                       conv=f"{100 * p.n_converged / max(p.n_total, 1):.1f} % converged")

        return program_and_verify(driver, cells, targets, cfg, progress=on_progress)


def _convergence_table(rows: list[LevelStats], title: str) -> Table:
    table = Table(title=title, caption="err: verify reading - target (µS, converged cells); "
                  "@t0: RMS spread of a read at t0 around the target, beside the model")
    for col in ("G_T µS", "cells", "conv %", "it p50", "it p90", "err mean", "err std",
                "σ_prog"):
        table.add_column(col, justify="right")
    with_t0 = any(r.t0_std_us is not None for r in rows)
    if with_t0:
        table.add_column("@t0", justify="right")
        table.add_column("model", justify="right")
    for r in rows:
        cells = [f"{r.target_us:.1f}", str(r.cells), f"{100 * r.converged_fraction:.2f}",
                 f"{r.iterations_p50:.0f}", f"{r.iterations_p90:.0f}",
                 f"{r.error_mean_us:+.3f}", f"{r.error_std_us:.3f}", f"{r.sigma_prog_us:.3f}"]
        if with_t0:
            cells += [f"{r.t0_std_us:.3f}" if r.t0_std_us is not None else "-",
                      f"{r.t0_model_std_us:.3f}" if r.t0_model_std_us is not None else "-"]
        table.add_row(*cells)
    return table


# -- commands ------------------------------------------------------------------------------
def cmd_program(args: argparse.Namespace) -> int:
    cfg = _program_config(args)
    driver = _make_mock_driver(args)
    with driver:
        info = driver.info
        if args.targets is not None:
            from protocols.experiment import load_targets_file

            cells, targets = load_targets_file(args.targets, info)
        else:
            n = info.n_cells if args.cells is None else args.cells
            if not 1 <= n <= info.n_cells:
                raise ConfigError(f"--cells {n} must be between 1 and the array's "
                                  f"{info.n_cells} cells")
            rng = np.random.default_rng(args.target_seed)
            cells = np.arange(n, dtype=np.uint32)
            targets = rng.uniform(0, info.g_max_us, n).astype(np.float32)
        console.print(f"chip [bold]{info.identity}[/]: {info.geometry.rows} x "
                      f"{info.geometry.cols}; programming {cells.size} cells")
        t_start = time.perf_counter()
        result = _run_program(driver, cells, targets, cfg)
        wall_s = time.perf_counter() - t_start
        g_t0 = None
        if info.virtual_clock:
            driver.clock.sleep_until(result.end_s + PCMModel().calibration.t0_s)
            g_t0 = driver.read(cells)
    rows = convergence_by_level(targets, result.g_us, result.converged, result.iterations,
                                g_t0_us=g_t0)
    console.print(_convergence_table(rows, "convergence per target level"))
    console.print(f"{100 * result.converged_fraction_nonzero:.2f} % of non-zero cells converged"
                  f" in {wall_s:.2f} s wall, {result.n_driver_calls} driver calls"
                  + ("  [yellow](interrupted)[/]" if result.interrupted else ""))
    return 0


def _readout_progress(bar: Progress, n: int):
    task = bar.add_task("readouts", total=n, next="")

    def on_wait(i: int, t_s: float, chip_now: float) -> None:
        bar.update(task, completed=i, next=f"next: readout {i + 1}/{n} at {_fmt_s(t_s)}")

    return task, on_wait


def _fmt_s(t_s: float) -> str:
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t_s >= size:
            return f"{t_s / size:.3g} {unit}"
    return f"{t_s:.3g} s"


def cmd_run(args: argparse.Namespace) -> int:
    from protocols.experiment import RunConfig, run_experiment
    from protocols.program_verify import ProgramProgress

    config = load_model(RunConfig, args.config)
    output = args.output or Path(time.strftime("run-%Y%m%d-%H%M%S.h5"))
    driver = _driver_for_run(config, str(args.config))
    n = config.schedule.n_readouts
    with driver, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[next]}"), TimeElapsedColumn(),
                          console=err_console, transient=True) as bar:
        pv = bar.add_task("program-and-verify", total=config.program.max_iterations, next="")

        def on_program(p: ProgramProgress) -> None:
            bar.update(pv, completed=p.iteration,
                       next=f"{100 * p.n_converged / max(p.n_total, 1):.1f} % converged")

        _, on_wait = _readout_progress(bar, n)
        result, taken = run_experiment(driver, config, output, config_dir=args.config.parent,
                                       program_progress=on_program, on_wait=on_wait)
    console.print(f"programmed {result.cells.size} cells on {driver.info.identity}: "
                  f"{100 * result.converged_fraction_nonzero:.2f} % of non-zero converged")
    state = "complete" if taken == n else f"stopped after {taken}; continue with " \
        f"'pcmlab resume {output}'"
    console.print(f"readouts: {taken} of {n} ({state})")
    console.print(f"wrote [bold]{output}[/]")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from pcmlab.store import RunReader
    from protocols.experiment import RunConfig, replay_programming, resume_experiment

    with RunReader(args.run) as run:
        config = validate_model(RunConfig, run.config, f"{args.run} (stored configuration)")
        n = config.schedule.n_readouts
    driver = _driver_for_run(config, str(args.run))
    with driver:
        if config.resource == "mock":
            # the in-process mock chip died with the run: rebuild it from its seed and
            # replay programming, checked bit for bit against the file
            replay_programming(driver, args.run)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[next]}"), console=err_console,
                      transient=True) as bar:
            _, on_wait = _readout_progress(bar, n)
            before, after = resume_experiment(driver, args.run, on_wait=on_wait)
    console.print(f"{args.run}: {before} readouts were there, {after} of {n} now")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pcmlab.analysis import drift_by_level
    from pcmlab.store import RunReader

    with RunReader(args.run) as run:
        info = Table(title=f"run {args.run}", show_header=False)
        info.add_row("schema / pcmlab", f"{run.file.attrs['schema']} / {run.pcmlab_version}")
        info.add_row("created", run.created)
        info.add_row("chip", run.driver_identity)
        targets = run.targets()
        info.add_row("cells", str(targets.cell.size))
        prog = run.programming()
        n = run.n_readouts
        planned = run.schedule_time_s.size or run.config.get("schedule", {}).get("n_readouts", 0)
        info.add_row("readouts", f"{n} of {planned}")
        if n:
            ro = run.readouts()
            info.add_row("read times", f"{_fmt_s(ro.time_s[0])} .. {_fmt_s(ro.time_s[-1])} "
                                       "after programming")
        for entry in run.interruptions:
            info.add_row("interruption", ", ".join(f"{k}={v}" for k, v in entry.items()))
        console.print(info)
        if prog is None:
            console.print("[yellow]programming never finished in this file[/]")
            return 0
        rows = convergence_by_level(targets.conductance_us, prog.conductance_us,
                                    prog.converged, prog.iterations)
        console.print(_convergence_table(rows, "programming"))
        if n >= 2:
            ro = run.readouts()
            drift = drift_by_level(targets.conductance_us, ro.time_s, ro.conductance_us,
                                   mask=prog.converged)
            table = Table(title="drift per level (fitted per device) beside the model")
            for col in ("G_T µS", "cells", "G first", "G last", "ν mean", "ν median", "ν std",
                        "model μ_ν", "model σ_ν"):
                table.add_column(col, justify="right")
            for d in drift:
                table.add_row(f"{d.target_us:.1f}", str(d.cells), f"{d.g_first_mean_us:.2f}",
                              f"{d.g_last_mean_us:.2f}", f"{d.nu_mean:.4f}",
                              f"{d.nu_median:.4f}", f"{d.nu_std:.4f}",
                              f"{d.model_nu_mean:.4f}", f"{d.model_nu_std:.4f}")
            console.print(table)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pcmlab.plots import plot_run
    from pcmlab.store import RunReader

    with RunReader(args.run) as run:
        targets = run.targets()
        prog = run.programming()
        if prog is None:
            raise ConfigError(f"{args.run}: programming never finished; nothing to plot")
        ro = run.readouts()
        out = args.output or args.run.with_suffix(".png")
        plot_run(out, targets.conductance_us, prog.conductance_us, prog.converged, ro.time_s,
                 ro.conductance_us, title=f"{args.run.name} — {run.driver_identity}")
    console.print(f"wrote [bold]{out}[/]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Program levels on the mock chip, then watch them drift for a year (virtual clock)."""
    from protocols.program_verify import ProgramVerifyConfig

    driver = _make_mock_driver(args)
    levels = np.array([0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 22.5], np.float32)
    model = PCMModel()
    with driver:
        info = driver.info
        n = info.n_cells
        cells = np.arange(n, dtype=np.uint32)
        targets = levels[np.arange(n) % levels.size]
        console.print(f"[bold]pcmlab {__version__} demo[/] on {info.identity}: "
                      f"{levels.size} levels x {n // levels.size} cells")
        result = _run_program(driver, cells, targets, ProgramVerifyConfig())
        times_s = {"25 s": 25.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 30 * 86400.0,
                   "1 year": 365 * 86400.0}
        reads = {}
        for label, t in times_s.items():
            driver.clock.sleep_until(result.end_s + t)
            reads[label] = driver.read(cells)
    g25 = reads["25 s"]
    rows = convergence_by_level(targets, result.g_us, result.converged, result.iterations,
                                g_t0_us=g25, t0_s=25.0)
    console.print(_convergence_table(rows, "program-and-verify on the mock chip"))
    table = Table(title="mean conductance (µS) after programming: measured / model")
    table.add_column("target µS", justify="right")
    for label in times_s:
        table.add_column(label, justify="right")
    for level in levels[1:]:
        sel = (targets == level) & result.converged
        cells_row = [f"{level:.1f}"]
        for label, t in times_s.items():
            nu = model.drift_nu_mean(level)
            predicted = float(model.drift(level, nu, t))
            cells_row.append(f"{reads[label][sel].mean():.2f} / {predicted:.2f}")
        table.add_row(*cells_row)
    console.print(table)
    console.print(f"{100 * result.converged_fraction_nonzero:.2f} % of non-zero cells "
                  "converged; drift over a year ran in the virtual clock.")
    return 0


# -- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcmlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pcmlab {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="program levels on the mock chip and watch them drift")
    _add_chip_options(p, rows=128, cols=256)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("program", help="program targets on the mock chip with program-and-verify")
    _add_chip_options(p, rows=256, cols=512)
    _add_program_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--targets", type=Path, metavar="FILE.npy",
                     help="targets in µS: 1-D (cells 0..N-1) or rows x cols; NaN = skip")
    src.add_argument("--cells", type=int, metavar="N",
                     help="program N cells to uniform random targets 0..G_max (default: all)")
    p.add_argument("--target-seed", type=int, default=1, help="seed of random targets")
    p.set_defaults(func=cmd_program)

    p = sub.add_parser("run", help="program, then read on a schedule into an HDF5 file")
    p.add_argument("config", type=Path, help="run configuration (.toml or .json)")
    p.add_argument("-o", "--output", type=Path, help="measurement file (default run-<time>.h5)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted run's readouts")
    p.add_argument("run", type=Path, help="measurement file of the run")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("inspect", help="summary tables of a measurement file")
    p.add_argument("run", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("plot", help="PNG: drift per level and programming-error histogram")
    p.add_argument("run", type=Path)
    p.add_argument("-o", "--output", type=Path, help="PNG file (default: RUN.png)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)])
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except PcmlabError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
