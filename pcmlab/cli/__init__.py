"""The ``pcmlab`` command line: the composition root wiring driver, protocol and store.

Only this package prints (through rich); user mistakes end in a one-line error and exit
status 2, never a traceback. ``common`` holds what the commands share, ``runs`` the
commands about chips and measurement files, ``network`` those about networks.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.logging import RichHandler

from mock_chip.controller import VIOLATIONS
from pcmlab import __version__
from pcmlab.cli.bridge import add_bridge_parsers
from pcmlab.cli.chips import cmd_check, cmd_drivers
from pcmlab.cli.common import add_chip_options, add_program_options, err_console
from pcmlab.cli.network import cmd_ablation, cmd_demo, cmd_deploy, cmd_evaluate, cmd_train
from pcmlab.cli.runs import (
    cmd_characterize,
    cmd_fit,
    cmd_inspect,
    cmd_mock_server,
    cmd_plot,
    cmd_program,
    cmd_recover,
    cmd_resume,
    cmd_run,
)
from pcmlab.cli.serve import add_serve_parser
from pcmlab.cli.sweeps import cmd_sweep
from pcmlab.errors import PcmlabError

EXIT_USAGE = 2


def output_file(text: str) -> Path:
    """An output path whose folder exists and takes a new file: checked before any work
    (by creating and removing a scratch file there, as the output will be)."""
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder '{folder}' does not exist; create it or "
                                         "write elsewhere")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a folder; give a file name")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".pcmlab-probe-"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write '{path}': folder '{folder}' does "
                                         f"not take new files ({exc.strerror or exc}); "
                                         "write elsewhere") from None
    return path


MEASUREMENT_SUFFIXES = (".h5", ".hdf5")


def netcdf_file(text: str) -> Path:
    """An output NetCDF file: its name ends in .nc."""
    path = output_file(text)
    if path.suffix.lower() != ".nc":
        raise argparse.ArgumentTypeError(f"'{path}': a sweep result is NetCDF and its name "
                                         f"ends in .nc; give e.g. '{path.with_suffix('.nc')}'")
    return path


def measurement_file(text: str) -> Path:
    """An output measurement file: HDF5, so its name ends in .h5 or .hdf5."""
    path = output_file(text)
    if path.suffix.lower() not in MEASUREMENT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"'{path}': a measurement file is HDF5 and its name ends in .h5 or .hdf5 (other "
            f"tools go by the suffix); give e.g. '{path.with_suffix('.h5')}'")
    return path


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, help="weights file of a factory model: a state dict "
                   "(torch.save(model.state_dict(), FILE)) or one written by 'pcmlab train'")
    p.add_argument("--data", type=Path, help=".npz with x_test, y_test (optional x_train, "
                   "y_train to calibrate ranges); default: digits for a model that takes "
                   "64 inputs")
    p.add_argument("--keep-digital", action="append", default=[], metavar="PATTERN",
                   help="keep layers whose name matches digital (fnmatch, e.g. 'conv1' or "
                   "'head.*'; repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcmlab", description="Program, read and evaluate phase-change-memory crossbar "
        "chips; the in-process mock chip unless --resource names a chip.")
    parser.add_argument("--version", action="version", version=f"pcmlab {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--catalog", metavar="PATH|URL", help="the run catalog every file "
                        "written is registered in: an SQLite file, postgresql://USER@HOST/DB, "
                        "or 'off' (default: $PCMLAB_CATALOG, else the per-user file)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kwargs):  # every command's --help shows its defaults
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        return _add(name, **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("demo", help="train a digits CNN, deploy it on the mock chip, report "
                       "accuracy over a year")
    add_chip_options(p, rows=256, cols=512)
    p.add_argument("--output-dir", type=Path, default=Path("pcmlab-demo"),
                   help="where the model, run file and plot go (default ./pcmlab-demo)")
    p.add_argument("--runs", type=int, default=25, help="simulated runs per time point")
    p.add_argument("--epochs", type=int, default=40, help="training epochs")
    p.add_argument("--weight-noise", type=float, default=0.05,
                   help="training weight noise, relative to W_max")
    p.add_argument("--bits", type=int, default=8, help="DAC and ADC bits")
    p.add_argument("--no-mvm", action="store_true", help="skip chip mode (on a chip with "
                   "in-array MVM the demo also runs the test set through the chip's "
                   "matrix-vector products at every readout, with and without "
                   "chip-in-the-loop calibration)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo's results "
                   "in the output folder")
    p.set_defaults(func=cmd_demo)

    model_help = ("a model file (pcmlab-model/1, see 'pcmlab train') or pkg.module:factory, "
                  "a callable that returns your nn.Module (with --weights)")
    p = sub.add_parser("deploy", help="map a model onto the mock chip, program it, "
                       "read it for a year, evaluate")
    p.add_argument("model", help=model_help)
    add_model_options(p)
    p.add_argument("-o", "--output", type=measurement_file, required=True,
                   help="measurement file (.h5)")
    p.add_argument("--bits", type=int, help="DAC and ADC bits (default: the model's, or 8)")
    p.add_argument("--runs", type=int, default=25, help="simulated runs per time point")
    p.add_argument("--no-tiling", action="store_true", help="refuse layers larger than "
                   "the array instead of splitting them into tiles")
    p.add_argument("--mvm", action="store_true", help="also chip mode at every readout "
                   "(the chip's MVM), with and without chip-in-the-loop calibration")
    p.add_argument("--parts", action="store_true", help="a network larger than the chip: "
                   "deploy it in successive parts on the one chip, each programmed and read "
                   "on the schedule (files OUT, OUT.part2, ...; evaluated together)")
    add_chip_options(p, rows=256, cols=512)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("evaluate", help="measured accuracy per readout of a deployment file")
    p.add_argument("run", type=Path)
    p.add_argument("--model", required=True, help="the model that was deployed: " + model_help)
    add_model_options(p)
    p.add_argument("--bits", type=int, help="DAC and ADC bits")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model for the chip (AnalogNets method)")
    p.add_argument("-o", "--output", type=output_file, required=True,
                   help="model file to write")
    p.add_argument("--method", choices=("full", "noise", "float"), default="full",
                   help="full AnalogNets method (default), noise injection only, or float")
    p.add_argument("--model", help="your model to start from, " + model_help + " (else the "
                   "digits reference CNN); a factory writes a weights file")
    p.add_argument("--weights", type=Path, help="weights (state dict) for a factory model; "
                   "without them it trains from the factory's initialization")
    p.add_argument("--data", type=Path, help=".npz with x_train, y_train, x_test, y_test "
                   "(default: digits, shaped as the model takes them)")
    p.add_argument("--keep-digital", action="append", default=[], metavar="PATTERN",
                   help="keep layers whose name matches digital (fnmatch; repeatable)")
    p.add_argument("--bits", type=int, default=8, help="ADC bits (the DAC gets one more)")
    p.add_argument("--epochs1", type=int, default=30, help="stage 1 epochs")
    p.add_argument("--epochs2", type=int, default=20, help="stage 2 epochs")
    p.add_argument("--eta", type=float, default=0.05, help="weight noise / W_max")
    p.add_argument("--alpha", type=float, default=2.5, help="clip at alpha * sigma_W")
    p.add_argument("--quant-noise", type=float, default=0.0,
                   help="share of values left unquantized in stage 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ablation", help="off-the-shelf vs noise injection vs full method "
                       "at 8/6/4 bits, simulated over a year")
    p.add_argument("--output-dir", type=Path, default=Path("pcmlab-ablation"))
    p.add_argument("--model", help="your untrained network, pkg.module:factory (default: "
                   "the digits reference CNN)")
    p.add_argument("--data", type=Path, help=".npz with x_train, y_train, x_test, y_test "
                   "(default: digits, shaped as the model takes them)")
    p.add_argument("--runs", type=int, default=25, help="simulated runs per time point")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    p.add_argument("--workers", type=int, metavar="N", help="a local Dask cluster of N "
                   "workers (default: in this process)")
    p.add_argument("--epochs1", type=int, default=30)
    p.add_argument("--epochs2", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("sweep", help="a grid of simulations (periphery, training, noise, "
                       "drift compensation, calibration) on Dask; resumable, NetCDF out")
    p.add_argument("sweep", type=Path, help="sweep file (.toml or .json), see docs/sweeps.md")
    p.add_argument("-o", "--output", type=netcdf_file, required=True,
                   help="result file (.nc, NetCDF: xarray.open_dataset opens it)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="start a local cluster of N "
                       "worker processes (one torch thread each); default: in this process")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run on an existing dask.distributed cluster")
    p.add_argument("--force", action="store_true", help="replace the result of another "
                   "sweep in OUTPUT")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("characterize", help="program level sets and read them (read noise, "
                       "drift) into a file for 'pcmlab fit'")
    p.add_argument("-o", "--output", type=measurement_file, required=True,
                   help="measurement file (.h5)")
    p.add_argument("--cells-per-level", type=int, default=1000)
    p.add_argument("--levels-us", type=float, nargs="+", help="levels (default 11 from 0 "
                   "to 25 µS)")
    p.add_argument("--burst-reads", type=int, default=10, help="repeated reads after t0")
    p.add_argument("--drift-reads", type=int, default=12)
    p.add_argument("--t-end", type=float, default=1e6, help="last drift read, s")
    add_chip_options(p, rows=128, cols=128)
    p.set_defaults(func=cmd_characterize)

    p = sub.add_parser("fit", help="fit the PCM model to a characterization file")
    p.add_argument("run", type=Path)
    p.add_argument("-o", "--output", type=output_file, required=True,
                   help="calibration file to write (.toml or .json)")
    p.add_argument("--plot", type=output_file,
                   help="PNG of data against fit (default: beside -o)")
    p.add_argument("--calibration", type=Path, help="prior constants (default: published)")
    p.add_argument("--aihwkit", type=output_file, metavar="FILE",
                   help="also write the fitted model for aihwkit: a .py module (needs "
                   "torch and aihwkit only) or its constants as .json")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("mock-server", help="serve a mock chip over TCP (SCPI) or a "
                       "pseudo-terminal (framed binary)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="SCPI over TCP, e.g. 127.0.0.1:5025 "
                   "(port 0: any free port)")
    p.add_argument("--pty", action="store_true", help="framed binary on a pseudo-terminal "
                   "(prints its path)")
    p.add_argument("--no-virtual-clock", action="store_true",
                   help="refuse clock advances, like a real chip")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="SCPI: close a connection silent this long, so the next client is "
                   "served (the mock serves one connection at a time)")
    g = p.add_argument_group("fault injection (rates per request, seeded by --seed)")
    for name in ("drop-request", "drop-reply", "corrupt-reply", "delay-reply", "disconnect"):
        g.add_argument(f"--{name}", type=float, default=0.0, metavar="RATE")
    g.add_argument("--break", dest="break_rule", action="append", default=[], metavar="RULE",
                   choices=sorted(VIOLATIONS), help="break a contract rule on purpose, to see "
                   "'pcmlab check' catch it: " + "; ".join(f"{k}: {v}" for k, v in
                                                          sorted(VIOLATIONS.items())))
    add_chip_options(p, rows=512, cols=2048)
    p.set_defaults(func=cmd_mock_server)

    p = sub.add_parser("drivers", help="the chip drivers installed (built-in and plugins) and "
                       "the resources each handles")
    p.set_defaults(func=cmd_drivers)

    p = sub.add_parser("check", help="conformance: does a chip or driver keep the contract "
                       "every protocol relies on? (exit 1 if not)")
    add_chip_options(p, rows=64, cols=128)
    p.add_argument("--cells", metavar="START:STOP", help="the cells the checks may pulse "
                   "(flat indices, STOP excluded; default 0:1024); the rest is never touched")
    p.add_argument("--yes", action="store_true", help="do not ask before overwriting the "
                   "cells (for scripts)")
    p.add_argument("--no-wire", action="store_true", help="driver-level checks only")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("program", help="program targets on the mock chip with program-and-verify")
    add_chip_options(p, rows=256, cols=512)
    add_program_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--targets", type=Path, metavar="FILE.npy",
                     help="targets in µS: 1-D (cells 0..N-1) or rows x cols; NaN = skip")
    src.add_argument("--cells", type=int, metavar="N",
                     help="program N cells to uniform random targets 0..G_max (default: all)")
    p.add_argument("--target-seed", type=int, default=1, help="seed of random targets")
    p.set_defaults(func=cmd_program)

    p = sub.add_parser("run", help="program, then read on a schedule into an HDF5 file")
    p.add_argument("config", type=Path, help="run configuration (.toml or .json)")
    p.add_argument("-o", "--output", type=measurement_file,
                   help="measurement file (default run-<time>.h5)")
    p.add_argument("--resource", help="the chip (overrides the configuration's 'resource'): "
                   "mock, a VISA resource, a serial port, or a plugin's resource")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted run's readouts")
    p.add_argument("run", type=Path, help="measurement file of the run")
    p.add_argument("--resource", help="reach the chip here (default: as the file says)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("recover", help="close the file of a run whose writer was killed, so "
                       "that plain h5py and xarray open it (changes no measured value)")
    p.add_argument("run", type=Path, help="measurement file of the run")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("inspect", help="summary tables of a measurement file or a sweep "
                       "result")
    p.add_argument("run", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("plot", help="PNG: drift per level and programming-error histogram")
    p.add_argument("run", type=Path)
    p.add_argument("-o", "--output", type=output_file, help="PNG file (default: RUN.png)")
    p.add_argument("--curves", metavar="AXIS", help="a sweep result: one curve per value of "
                   "this axis (default: bits, else the first axis)")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.set_defaults(func=cmd_plot)
    add_bridge_parsers(sub, add_model_options, output_file)

    from pcmlab.cli.catalog import add_parsers as add_catalog_parsers

    add_catalog_parsers(sub)
    add_serve_parser(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str | None
               ) -> argparse.ArgumentParser | None:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said with the usage line of the subcommand, not the top-level one
        sub = _subparser(parser, args.command)
        (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)])
    if args.catalog is not None:
        from pcmlab.catalog.registration import configure

        configure(args.catalog)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except PcmlabError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        return EXIT_USAGE
    except OSError as exc:  # the file system said no (permissions, full disk, ...)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err_console.print(f"[bold red]error:[/] {exc.strerror or exc}{where}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130

