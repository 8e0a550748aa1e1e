"""What the commands share: consoles, chip options, progress displays, tables."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pcmlab.analysis import LevelStats
from pcmlab.config import ArrayGeometry, load_model, validate_model
from pcmlab.errors import ConfigError

# Into a file or a pipe rich would assume 80 columns and cut table cells ("-0.1…"): give
# such output room instead (a terminal keeps its own width).
_PIPE_WIDTH = None if sys.stdout.isatty() else 200
console = Console(soft_wrap=True, width=_PIPE_WIDTH)
err_console = Console(stderr=True, soft_wrap=True,
                      width=None if sys.stderr.isatty() else 200)
log = logging.getLogger("pcmlab")


class _Given(argparse.Action):
    """Stores the value and remembers that the option was given (``args.chip_options_given``),
    so that options a --chip FILE would override are refused, not ignored."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        given = set(getattr(namespace, "chip_options_given", None) or ())
        namespace.chip_options_given = given | {option_string}


def add_chip_options(p: argparse.ArgumentParser, rows: int, cols: int) -> None:
    g = p.add_argument_group("chip")
    g.add_argument("--resource", metavar="RESOURCE",
                   help="a chip (or mock server) to use instead of the in-process mock: "
                   "TCPIP0::host::5025::SOCKET, /dev/ttyUSB0, ...; several, comma-separated, "
                   "are one group of chips")
    g.add_argument("--dialect", type=Path, metavar="FILE",
                   help="the SCPI dialect file of a chip that speaks SCPI with other words "
                   "(default: pcmlab's; see docs/writing-a-driver.md)")
    g.add_argument("--chips", type=int, default=1, metavar="N",
                   help="in-process mock chips (a group for a network larger than one chip; "
                   "seeds SEED, SEED+1, ..., SEED being --seed or the --chip file's seed)")
    g.add_argument("--chip", type=Path, metavar="FILE",
                   help="mock chip configuration (.toml or .json, MockChipConfig)")
    g.add_argument("--rows", type=int, default=rows, action=_Given,
                   help=f"array rows (default {rows})")
    g.add_argument("--cols", type=int, default=cols, action=_Given,
                   help=f"array columns (default {cols})")
    g.add_argument("--seed", type=int, default=0, action=_Given,
                   help="seed of the mock chip (default 0)")
    g.add_argument("--no-faults", default=False, nargs=0, action=_Given,
                   help="a chip without faulty devices")
    g.add_argument("--calibration", type=Path, metavar="FILE", action=_Given,
                   help="PCM model constants (from 'pcmlab fit') for the mock chip and the "
                   "simulated mode")


def make_driver(args: argparse.Namespace):  # -> CrossbarDriver
    """The in-process mock chip of the options, or the chip at --resource."""
    from drivers import open_driver
    from drivers.mock import MockDriver
    from mock_chip import FaultRates, MockChipConfig

    if getattr(args, "resource", None):
        return open_driver(args.resource, **dialect_option(args))
    if getattr(args, "dialect", None) is not None:
        raise ConfigError("--dialect is for a chip at --resource (the in-process mock chip "
                          "has no wire); for a mock server: pcmlab mock-server --dialect FILE")
    chips = getattr(args, "chips", 1)
    if chips < 1:
        raise ConfigError(f"--chips {chips}: need at least one chip")
    if chips > 1:
        from drivers import ChipGroup

        one = argparse.Namespace(**{**vars(args), "chips": 1})
        drivers = []
        for k in range(chips):
            one.seed, one.chip_index = args.seed + k, k
            drivers.append(make_driver(one))
        return ChipGroup(drivers)
    if args.chip is not None:
        given = sorted(getattr(args, "chip_options_given", None) or ())
        if given:
            raise ConfigError(f"--chip {args.chip} with {', '.join(given)}: the chip file sets "
                              "the geometry, seed, faults and calibration of the mock chip; "
                              "put them in the file (MockChipConfig) instead, or leave out "
                              "--chip")
        cfg = load_model(MockChipConfig, args.chip)
        # chip k of a group from one file: the file's chip with seed SEED + k
        cfg = cfg.model_copy(update={"seed": cfg.seed + getattr(args, "chip_index", 0)})
    else:
        data: dict[str, object] = {
            "geometry": validate_model(ArrayGeometry, {"rows": args.rows, "cols": args.cols},
                                       "--rows/--cols"),
            "seed": args.seed,
        }
        if args.no_faults:
            data["faults"] = FaultRates.none()
        if getattr(args, "calibration", None) is not None:
            data["calibration"] = calibration_of(args)
            if not args.no_faults:  # the calibration's fault rates, as the simulation's
                data["faults"] = FaultRates.of_calibration(data["calibration"])
        cfg = validate_model(MockChipConfig, data, "mock chip options")
    return MockDriver(config=cfg)


def refuse_overwrite(args: argparse.Namespace, *paths: Path | None,
                     advice: str = "choose another file name, or pass --force to replace "
                     "it") -> None:
    """Outputs are never replaced silently: an existing file needs --force (checked
    before any work)."""
    if getattr(args, "force", False):
        return
    for path in paths:
        if path is not None and Path(path).exists():
            raise ConfigError(f"{path} exists; {advice}")


def dialect_option(args: argparse.Namespace) -> dict[str, object]:
    """``dialect=`` for open_driver when --dialect is given (checked when loaded)."""
    if getattr(args, "dialect", None) is None:
        return {}
    from pcmlab.scpi import load_dialect

    return {"dialect": load_dialect(args.dialect)}


def calibration_of(args: argparse.Namespace):  # -> PCMCalibration
    """The PCM model the simulated mode and the fit start from: a chip file's own (the
    mock chip it builds), else --calibration, else the published constants."""
    from pcmlab.pcm_model import PCMCalibration

    if getattr(args, "chip", None) is not None and not getattr(args, "resource", None):
        # the mock chip of a chip file: simulated as that chip is, its constants and its
        # faulty devices (make_driver refuses --calibration and --no-faults beside --chip)
        from mock_chip import MockChipConfig

        chip = load_model(MockChipConfig, args.chip)
        return chip.calibration.model_copy(update={
            "stuck_reset_rate": chip.faults.stuck_reset, "stuck_set_rate": chip.faults.stuck_set,
            "weak_rate": chip.faults.weak})
    cal = (PCMCalibration() if getattr(args, "calibration", None) is None
           else load_model(PCMCalibration, args.calibration))
    # a mock chip without faulty devices is simulated without them too
    return cal.without_faults() if getattr(args, "no_faults", False) else cal


def program_config(args: argparse.Namespace):  # -> ProgramVerifyConfig
    from protocols.program_verify import ProgramVerifyConfig

    data: dict[str, object] = {}
    if args.pv_config is not None:
        data = load_model(ProgramVerifyConfig, args.pv_config).model_dump()
    if getattr(args, "allow_targets_below_resolution", False):
        data["allow_targets_below_resolution"] = True
    for opt, name in (("tolerance_abs", "tolerance_abs_us"), ("tolerance_rel", "tolerance_rel"),
                      ("max_iterations", "max_iterations"), ("gain", "gain_ua_per_us"),
                      ("max_batch_cells", "max_batch_cells")):
        value = getattr(args, opt)
        if value is not None:
            data[name] = value
    return validate_model(ProgramVerifyConfig, data, "program-and-verify settings")


def add_program_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("program-and-verify")
    g.add_argument("--pv-config", type=Path, metavar="FILE",
                   help="program-and-verify settings (.toml or .json)")
    g.add_argument("--tolerance-abs", type=float, metavar="US", help="window, fixed part (µS)")
    g.add_argument("--tolerance-rel", type=float, metavar="FRAC", help="window, share of G_T")
    g.add_argument("--max-iterations", type=int, metavar="N")
    g.add_argument("--gain", type=float, metavar="UA_PER_US", help="feedback gain (µA/µS)")
    g.add_argument("--max-batch-cells", type=_batch_option, metavar="N|auto",
                   help="most cells per driver call; 'auto' measures the chip's per-call "
                   "cost and keeps each call within 2 s (default: all cells in one call)")
    g.add_argument("--allow-targets-below-resolution", action="store_true",
                   help="program targets whose non-zero values all lie below the read "
                   "resolution (by default refused as a likely unit mistake: µS expected)")


def _batch_option(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of cells, or auto"
                                         ) from None


def run_program(driver, cells, targets, cfg):  # -> ProgramResult
    from protocols.program_verify import ProgramProgress, program_and_verify

    with Progress(TextColumn("[bold]program-and-verify"), BarColumn(),
                  TextColumn("{task.fields[conv]}"), TextColumn("iteration {task.completed}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("pv", total=cfg.max_iterations, conv="")

        def on_progress(p: ProgramProgress) -> None:
            bar.update(task, completed=p.iteration,
                       conv=f"{100 * p.n_converged / max(p.n_total, 1):.1f} % converged")

        return program_and_verify(driver, cells, targets, cfg, progress=on_progress)


def convergence_table(rows: list[LevelStats], title: str) -> Table:
    with_t0 = any(r.t0_std_us is not None for r in rows)
    caption = ("err: verify reading - target (µS, converged cells); σ_prog: the model's "
               "programming spread at the targets (RMS)")
    if with_t0:  # the footnote describes the columns the table has, no more
        caption += "; @t0: RMS spread of a read at t0 around the target, beside the model"
    table = Table(title=title, caption=caption)
    for col in ("G_T µS", "cells", "conv %", "it p50", "it p90", "err mean", "err std",
                "σ_prog"):
        table.add_column(col, justify="right")
    if with_t0:
        table.add_column("@t0", justify="right")
        table.add_column("model", justify="right")
    for r in rows:
        cells = [r.label or f"{r.target_us:.4g}", str(r.cells), f"{100 * r.converged_fraction:.2f}",
                 f"{r.iterations_p50:.0f}", f"{r.iterations_p90:.0f}",
                 f"{r.error_mean_us:+.3f}", f"{r.error_std_us:.3f}", f"{r.sigma_prog_us:.3f}"]
        if with_t0:
            cells += [f"{r.t0_std_us:.3f}" if r.t0_std_us is not None else "-",
                      f"{r.t0_model_std_us:.3f}" if r.t0_model_std_us is not None else "-"]
        table.add_row(*cells)
    return table


@contextmanager
def readout_progress(n: int) -> Iterator[tuple[Progress, Callable[[int, float, float], None]]]:
    """A live display of the readout schedule: (the display, the schedule's on_wait)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[next]}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("readouts", total=n, next="")

        def on_wait(i: int, t_s: float, chip_now: float) -> None:
            bar.update(task, completed=i, next=f"next: readout {i + 1}/{n} at {fmt_s(t_s)}")

        yield bar, on_wait


def fmt_s(t_s: float) -> str:
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t_s >= size:
            return f"{t_s / size:.3g} {unit}"
    return f"{t_s:.3g} s"


def record_of(args: argparse.Namespace, driver) -> dict[str, object]:
    """What a file keeps about its chip so that 'pcmlab resume' can reach it again."""
    from drivers import ChipGroup
    from drivers.mock import MockDriver

    if isinstance(driver, MockDriver):
        return {"resource": "mock", "chip": driver.chip.config.model_dump(mode="json")}
    if isinstance(driver, ChipGroup) and not getattr(args, "resource", None):
        return {"resource": "mock", "chips": [d.chip.config.model_dump(mode="json")
                                              for d in driver.drivers]}
    return {"resource": args.resource}


def accuracy_table(time_s, measured, simulated, ideal: float, title: str) -> Table:
    caption = f"float model (ideal): {100 * ideal:.2f} %"
    if simulated is not None and simulated.includes:
        # its own line of the caption: a long one would wrap at the table's width
        caption += f"\nsimulated: {simulated.includes}"
    table = Table(title=title, caption=caption, caption_justify="left")
    for col in ("time", "measured %", "simulated %", "± std"):
        table.add_column(col, justify="right")
    for i, t in enumerate(time_s):
        row = [fmt_s(float(t)), f"{100 * measured[i]:.2f}"]
        if simulated is not None:
            j = int(np.argmin(np.abs(np.log(simulated.time_s) - np.log(t))))
            row += [f"{100 * simulated.mean[j]:.2f}", f"{100 * simulated.std[j]:.2f}"]
        else:
            row += ["-", "-"]
        table.add_row(*row)
    return table
