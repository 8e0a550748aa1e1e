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
    g = p.add_argument_group("chip")
    g.add_argument("--resource", metavar="RESOURCE",
                   help="a chip (or mock server) to use instead of the in-process mock: "
                   "TCPIP0::host::5025::SOCKET, /dev/ttyUSB0, ...")
    g.add_argument("--chip", type=Path, metavar="FILE",
                   help="mock chip configuration (.toml or .json, MockChipConfig)")
    g.add_argument("--rows", type=int, default=rows, help=f"array rows (default {rows})")
    g.add_argument("--cols", type=int, default=cols, help=f"array columns (default {cols})")
    g.add_argument("--seed", type=int, default=0, help="seed of the mock chip (default 0)")
    g.add_argument("--no-faults", action="store_true", help="a chip without faulty devices")
    g.add_argument("--calibration", type=Path, metavar="FILE",
                   help="PCM model constants (from 'pcmlab fit') for the mock chip and the "
                   "simulated mode")


def _driver_for_run(config, source: str):  # (RunConfig) -> CrossbarDriver
    """The driver a run's configuration names: the in-process mock chip, or a resource."""
    from drivers import open_driver
    from drivers.mock import MockDriver
    from mock_chip import MockChipConfig

    if config.resource == "mock":
        return MockDriver(config=validate_model(MockChipConfig, config.chip,
                                                f"{source} [chip]"))
    return open_driver(config.resource)


def cmd_mock_server(args: argparse.Namespace) -> int:
    """Serve a mock chip over TCP (SCPI) or a pseudo-terminal (framed binary)."""
    import signal
    import threading

    from mock_chip import MockChip, MockChipConfig
    from mock_chip.clock import RealtimeClock
    from mock_chip.controller import Controller
    from mock_chip.faults import TransportFaults
    from mock_chip.scpi_server import ScpiServer
    from mock_chip.serial_server import SerialServer

    if (args.tcp is None) == (not args.pty):
        raise ConfigError("give exactly one of --tcp HOST:PORT or --pty")
    faults = validate_model(TransportFaults, {
        "drop_request": args.drop_request, "drop_reply": args.drop_reply,
        "corrupt_reply": args.corrupt_reply, "delay_reply": args.delay_reply,
        "disconnect": args.disconnect, "seed": args.seed}, "fault options")
    cfg = (load_model(MockChipConfig, args.chip) if args.chip is not None else
           validate_model(MockChipConfig, {"geometry": {"rows": args.rows, "cols": args.cols},
                                           "seed": args.seed}, "mock chip options"))
    controller = Controller(MockChip(cfg, clock=RealtimeClock()),
                            virtual_clock=not args.no_virtual_clock)
    if args.tcp is not None:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"--tcp {args.tcp!r}: expected HOST:PORT, e.g. 127.0.0.1:5025")
        try:
            server = ScpiServer(controller, host, int(port), faults=faults)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.tcp}: {exc.strerror}") from None
        where = f"{server.resource}"
    else:
        server = SerialServer(controller, faults=faults)
        where = server.path
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    console.print(f"mock chip {controller.identity()} serving on {where}", highlight=False)
    sys.stdout.flush()
    while not stop.wait(0.2):
        pass
    server.stop()
    console.print("mock chip server stopped")
    return 0


def _make_driver(args: argparse.Namespace):  # -> CrossbarDriver
    """The in-process mock chip of the options, or the chip at --resource."""
    from drivers import open_driver
    from drivers.mock import MockDriver
    from mock_chip import FaultRates, MockChipConfig

    if getattr(args, "resource", None):
        return open_driver(args.resource)
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
        if getattr(args, "calibration", None) is not None:
            data["calibration"] = _calibration(args)
        cfg = validate_model(MockChipConfig, data, "mock chip options")
    return MockDriver(config=cfg)


def _calibration(args: argparse.Namespace):  # -> PCMCalibration
    from pcmlab.pcm_model import PCMCalibration

    if getattr(args, "calibration", None) is None:
        return PCMCalibration()
    return load_model(PCMCalibration, args.calibration)


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
    driver = _make_driver(args)
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


def _record(args: argparse.Namespace, driver) -> dict[str, object]:
    """What a file keeps about its chip so that 'pcmlab resume' can reach it again."""
    from drivers.mock import MockDriver

    if isinstance(driver, MockDriver):
        return {"resource": "mock", "chip": driver.chip.config.model_dump(mode="json")}
    return {"resource": args.resource}


def cmd_resume(args: argparse.Namespace) -> int:
    from drivers import open_driver
    from drivers.mock import MockDriver
    from mock_chip import MockChipConfig
    from pcmlab.store import RunReader
    from protocols.experiment import RunConfig, replay_programming, resume_experiment
    from protocols.program_verify import ProgramVerifyConfig

    source = f"{args.run} (stored configuration)"
    with RunReader(args.run) as run:
        stored = run.config
        n = run.schedule_time_s.size
        done = run.n_readouts
    if done >= n:
        console.print(f"{args.run}: {done} readouts were there, {done} of {n} now "
                      "(complete: nothing to resume)")
        return 0
    resource = args.resource or stored.get("resource", "mock")
    if "characterize" in stored:
        program = validate_model(ProgramVerifyConfig, stored["characterize"].get("program", {}),
                                 source)
    elif "deploy" in stored:
        program = None  # pair compensation cannot be replayed
    else:
        program = validate_model(RunConfig, stored, source).program
    if resource != "mock":
        driver = open_driver(resource)
    elif "chip" not in stored or program is None:
        raise ConfigError(f"{args.run} was measured on the in-process mock chip, which ended "
                          "with the run, and this kind of run cannot be rebuilt; measure it "
                          "again (runs on a chip or a mock server resume with --resource)")
    else:
        driver = MockDriver(config=validate_model(MockChipConfig, stored["chip"], source))
    with driver:
        if resource == "mock" and program is not None:
            # the in-process mock chip died with the run: rebuild it from its seed and
            # replay programming, checked bit for bit against the file
            replay_programming(driver, args.run, program)
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


def _accuracy_table(time_s, measured, simulated, ideal: float, title: str) -> Table:
    table = Table(title=title, caption=f"float model (ideal): {100 * ideal:.2f} %")
    for col in ("time", "measured %", "simulated %", "± std"):
        table.add_column(col, justify="right")
    for i, t in enumerate(time_s):
        row = [_fmt_s(float(t)), f"{100 * measured[i]:.2f}"]
        if simulated is not None:
            j = int(np.argmin(np.abs(np.log(simulated.time_s) - np.log(t))))
            row += [f"{100 * simulated.mean[j]:.2f}", f"{100 * simulated.std[j]:.2f}"]
        else:
            row += ["-", "-"]
        table.add_row(*row)
    return table


def _train_reference(args: argparse.Namespace):
    from pcmlab.tasks import load_digits, reference_cnn, train_classifier

    data = load_digits(seed=args.seed)
    with Progress(TextColumn("[bold]training"), BarColumn(),
                  TextColumn("epoch {task.completed}/{task.total}"),
                  TextColumn("{task.fields[log]}"), console=err_console,
                  transient=True) as bar:
        task = bar.add_task("train", total=args.epochs, log="")

        def on_epoch(epoch: int, loss: float, acc: float) -> None:
            bar.update(task, completed=epoch, log=f"loss {loss:.3f}, train acc {acc:.3f}")
            log.info("epoch %d: loss %.4f, train accuracy %.4f", epoch, loss, acc)

        model = train_classifier(reference_cnn(seed=args.seed), data.x_train, data.y_train,
                                 epochs=args.epochs, weight_noise=args.weight_noise,
                                 seed=args.seed, on_epoch=on_epoch)
    return model, data


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the reference CNN, deploy it on the mock chip, read it for a year (virtual
    clock) and report accuracy over time, measured beside simulated."""
    from pcmlab.evaluator import AnalogEvaluator, Periphery
    from pcmlab.nn_model import save_model_file
    from pcmlab.plots import plot_accuracy
    from pcmlab.tasks import DIGITS_INPUT_SHAPE
    from protocols.deploy import DeployConfig, deploy_network

    out_dir = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model, data = _train_reference(args)
    model_path = save_model_file(model, out_dir / "demo-model.pt",
                                 input_shape=DIGITS_INPUT_SHAPE)
    periphery = validate_model(Periphery, {"dac_bits": args.bits, "adc_bits": args.bits},
                               "--bits")
    evaluator = AnalogEvaluator(model, data.x_train, periphery)
    cfg = validate_model(DeployConfig, {"simulated_runs": args.runs, "seed": args.seed,
                                        "periphery": periphery}, "demo options")
    driver = _make_driver(args)
    run_path = out_dir / "demo-run.h5"
    with driver, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[next]}"), console=err_console,
                          transient=True) as bar:
        _, on_wait = _readout_progress(bar, cfg.schedule.times_s().size)
        result = deploy_network(driver, evaluator, data.x_test, data.y_test, run_path, cfg,
                                pcm=PCMModel(_calibration(args)), overwrite=True,
                                on_wait=on_wait, record=_record(args, driver))
    console.print(f"[bold]pcmlab {__version__} demo[/]: digits CNN on {driver.info.identity}")
    util = Table(title="mapping", show_header=True)
    for col in ("layer", "devices", "array %"):
        util.add_column(col, justify="right")
    for name, n, share in result.mapping.utilization():
        util.add_row(name, str(n), f"{100 * share:.2f}")
    console.print(util)
    console.print(f"programming: {100 * result.programming.converged_fraction_nonzero:.2f} % "
                  f"of non-zero devices converged ({result.programming.cells.size} devices)")
    console.print(_accuracy_table(result.time_s, result.measured_accuracy, result.simulated,
                                  result.ideal_accuracy,
                                  f"test accuracy, {args.bits}-bit DAC/ADC, "
                                  f"{args.runs} simulated runs per point"))
    png = plot_accuracy(out_dir / "demo-accuracy.png", result.time_s,
                        result.measured_accuracy,
                        None if result.simulated is None else result.simulated.time_s,
                        None if result.simulated is None else result.simulated.mean,
                        None if result.simulated is None else result.simulated.std,
                        result.ideal_accuracy,
                        title=f"digits CNN on the mock PCM chip ({args.bits}-bit periphery)")
    console.print(f"wrote {model_path}, {run_path}, {png} in "
                  f"{time.perf_counter() - t_start:.1f} s")
    return 0


def _model_and_data(model_path: Path, data_path: Path | None):
    from pcmlab.nn_model import load_model_file
    from pcmlab.tasks import DIGITS_INPUT_SHAPE, load_digits, load_npz_dataset

    loaded = load_model_file(model_path)
    if data_path is not None:
        data = load_npz_dataset(data_path, loaded.input_shape)
    elif tuple(loaded.input_shape) == DIGITS_INPUT_SHAPE:
        data = load_digits(seed=int(loaded.extra.get("data_seed", 0)))
    else:
        raise ConfigError(f"{model_path} takes inputs {loaded.input_shape}; give its test "
                          "data with --data FILE.npz (x_test, y_test)")
    return loaded, data


def _periphery_for(loaded, bits: int | None):
    from pcmlab.evaluator import Periphery

    stored = loaded.extra.get("periphery") or {}
    data = dict(stored)
    if bits is not None:
        data.update({"dac_bits": bits, "adc_bits": bits})
    return validate_model(Periphery, data, "periphery")


def _evaluator_for(loaded, data, bits: int | None):
    """The evaluator of a model file: its trained ranges and periphery when it has them
    (and the bits are not overridden), else ranges calibrated on the data."""
    from pcmlab.evaluator import AnalogEvaluator
    from pcmlab.training import ranges_from_extra

    ranges = ranges_from_extra(loaded.extra) if bits is None else None
    return AnalogEvaluator(loaded.model, data.x_train, _periphery_for(loaded, bits),
                           ranges=ranges)


def cmd_deploy(args: argparse.Namespace) -> int:
    from protocols.deploy import DeployConfig, deploy_network

    loaded, data = _model_and_data(args.model, args.data)
    evaluator = _evaluator_for(loaded, data, args.bits)
    periphery = evaluator.periphery
    cfg = validate_model(DeployConfig, {"simulated_runs": args.runs, "seed": args.seed,
                                        "periphery": periphery, "tiling": not args.no_tiling},
                         "deploy options")
    driver = _make_driver(args)
    with driver, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[next]}"), console=err_console,
                          transient=True) as bar:
        _, on_wait = _readout_progress(bar, cfg.schedule.times_s().size)
        result = deploy_network(driver, evaluator, data.x_test, data.y_test, args.output, cfg,
                                pcm=PCMModel(_calibration(args)), on_wait=on_wait,
                                record=_record(args, driver))
    console.print(_accuracy_table(result.time_s, result.measured_accuracy, result.simulated,
                                  result.ideal_accuracy, f"{args.model.name} on "
                                  f"{driver.info.identity}"))
    console.print(f"wrote [bold]{args.output}[/]")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from protocols.deploy import evaluate_file

    loaded, data = _model_and_data(args.model, args.data)
    evaluator = _evaluator_for(loaded, data, args.bits)
    time_s, accuracy = evaluate_file(args.run, evaluator, data.x_test, data.y_test)
    console.print(_accuracy_table(time_s, accuracy, None,
                                  evaluator.ideal_accuracy(data.x_test, data.y_test),
                                  f"measured accuracy of {args.run.name}"))
    return 0


def _epoch_log(bar: Progress, task):
    def on_epoch(stage: str, epoch: int, loss: float, acc: float) -> None:
        bar.update(task, advance=1, log=f"{stage} epoch {epoch}")
        bar.console.print(f"{stage:>8} epoch {epoch:3d}  loss {loss:.4f}  "
                          f"train accuracy {100 * acc:.2f} %", highlight=False)
    return on_epoch


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model for the chip: float, noise injection, or the full AnalogNets method."""
    import torch

    from pcmlab.nn_model import load_model_file, save_model_file
    from pcmlab.tasks import (
        DIGITS_INPUT_SHAPE,
        load_digits,
        load_npz_dataset,
        reference_cnn,
        train_classifier,
    )
    from pcmlab.training import TrainingConfig, train_analognets

    cfg = validate_model(TrainingConfig, {
        "stage1_epochs": args.epochs1, "stage2_epochs": args.epochs2, "eta": args.eta,
        "alpha": args.alpha, "adc_bits": args.bits, "quant_noise": args.quant_noise,
        "seed": args.seed}, "training options")
    if args.model is not None:
        loaded = load_model_file(args.model)
        model, input_shape = loaded.model, loaded.input_shape
        if args.data is None:
            raise ConfigError("--model needs --data FILE.npz with x_train, y_train, x_test, "
                              "y_test")
        data = load_npz_dataset(args.data, input_shape)
    else:
        model, input_shape = reference_cnn(args.seed), DIGITS_INPUT_SHAPE
        data = load_digits(seed=args.seed)
    total = cfg.stage1_epochs + (cfg.stage2_epochs if args.method == "full" else 0)
    with Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.fields[log]}"),
                  console=err_console, transient=True) as bar:
        on_epoch = _epoch_log(bar, bar.add_task("train", total=total, log=""))
        if args.method == "full":
            result = train_analognets(model, data.x_train, data.y_train, cfg,
                                      on_epoch=on_epoch)
            model, extra = result.model, result.extra()
        else:
            eta = cfg.eta if args.method == "noise" else 0.0
            model = train_classifier(
                model, data.x_train, data.y_train, epochs=total, weight_noise=eta,
                seed=args.seed,
                on_epoch=lambda e, loss, acc: on_epoch(args.method, e, loss, acc))
            extra = {}
    extra["method"] = args.method
    extra["data_seed"] = args.seed
    path = save_model_file(model, args.output, input_shape=input_shape, extra=extra)
    with torch.no_grad():
        acc = float((model.eval()(data.x_test).argmax(1) == data.y_test).float().mean())
    console.print(f"wrote [bold]{path}[/] ({args.method}); float test accuracy "
                  f"{100 * acc:.2f} %")
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    """The AnalogNets ablation on the reference task, in simulated mode."""
    from pcmlab.ablation import PAPER_TIME_LABELS, run_ablation
    from pcmlab.plots import plot_ablation
    from pcmlab.tasks import load_digits
    from pcmlab.training import TrainingConfig

    cfg = validate_model(TrainingConfig, {"stage1_epochs": args.epochs1,
                                          "stage2_epochs": args.epochs2, "seed": args.seed},
                         "training options")
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: need at least one simulated run")
    out_dir = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with Progress(TextColumn("[bold]ablation"), TextColumn("{task.fields[step]}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("ablation", step="")
        rows = run_ablation(load_digits(seed=args.seed), bits=tuple(args.bits),
                            runs=args.runs, config=cfg, seed=args.seed,
                            progress=lambda text: bar.update(task, step=text))
    table = Table(title=f"AnalogNets ablation, digits CNN, simulated ({args.runs} runs), "
                  "test accuracy %")
    for col in ("method", "ADC/DAC bits", *PAPER_TIME_LABELS):
        table.add_column(col, justify="right")
    lines = ["| method | ADC/DAC bits | " + " | ".join(PAPER_TIME_LABELS) + " |",
             "|---|---|" + "---|" * len(PAPER_TIME_LABELS)]
    for r in rows:
        cells = [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(r.mean, r.std, strict=True)]
        table.add_row(r.method, f"{r.adc_bits}/{r.dac_bits}", *cells)
        lines.append(f"| {r.method} | {r.adc_bits}/{r.dac_bits} | " + " | ".join(cells) + " |")
    console.print(table)
    (out_dir / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    png = plot_ablation(out_dir / "ablation.png", rows, PAPER_TIME_LABELS)
    console.print(f"wrote {out_dir / 'ablation.md'} and {png} in "
                  f"{time.perf_counter() - t_start:.0f} s")
    return 0


def cmd_characterize(args: argparse.Namespace) -> int:
    """Program level sets, read them for read noise and drift, into a file for 'fit'."""
    from protocols.characterize import CharacterizeConfig, characterize

    data: dict[str, object] = {"cells_per_level": args.cells_per_level,
                               "burst_reads": args.burst_reads, "t_end_s": args.t_end,
                               "drift_reads": args.drift_reads}
    if args.levels_us is not None:
        data["levels_us"] = args.levels_us
    cfg = validate_model(CharacterizeConfig, data, "characterize options")
    driver = _make_driver(args)
    with driver, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[next]}"), console=err_console,
                          transient=True) as bar:
        _, on_wait = _readout_progress(bar, cfg.times_s().size)
        result, taken = characterize(driver, args.output, cfg, on_wait=on_wait,
                                     record=_record(args, driver))
    console.print(f"{len(cfg.levels_us)} levels x {cfg.cells_per_level} cells on "
                  f"{driver.info.identity}: {100 * result.converged_fraction_nonzero:.2f} % of "
                  f"non-zero converged; {taken} readouts")
    console.print(f"wrote [bold]{args.output}[/]; next: pcmlab fit {args.output} -o "
                  "calibration.toml")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the statistical PCM model to a characterization file."""
    from pcmlab.config import save_model
    from pcmlab.fitting import fit_file
    from pcmlab.plots import plot_fit

    prior_cal = _calibration(args)
    result = fit_file(args.run, prior_cal)
    fitted, prior = PCMModel(result.calibration), PCMModel(prior_cal)
    table = Table(title=f"fit of {args.run.name}: measured / fitted model (prior)",
                  caption="prior: the constants the fit started from")
    for col in ("G_T µS", "cells", "σ_prog µS", "ν mean", "ν std", "Q_s"):
        table.add_column(col, justify="right")
    for lv in result.levels:
        g = lv.target_us
        table.add_row(
            f"{g:.1f}", str(lv.cells),
            f"{lv.sigma_prog_us:.3f} / {float(fitted.prog_noise_sigma_us(g)):.3f} "
            f"({float(prior.prog_noise_sigma_us(g)):.3f})",
            f"{lv.nu_mean:.4f} / {float(fitted.drift_nu_mean(g)):.4f}",
            f"{lv.nu_std:.4f} / {float(fitted.drift_nu_std(g)):.4f}",
            f"{lv.q_s:.4f} / {float(fitted.read_noise_q(g)):.4f}")
    console.print(table)
    c = result.calibration
    console.print(f"σ_prog = {c.prog_noise_coeffs_us[0]:.4f} + {c.prog_noise_coeffs_us[1]:.4f} g"
                  f" + {c.prog_noise_coeffs_us[2]:.4f} g²;  μ_ν = clip({c.drift_mu_coeffs[0]:.4f}"
                  f" ln g + {c.drift_mu_coeffs[1]:.4f}, {c.drift_mu_range[0]:.4f}, "
                  f"{c.drift_mu_range[1]:.4f});  Q_s = min({c.read_noise_q:.5f} / g^"
                  f"{c.read_noise_exponent}, {c.read_noise_q_max})", highlight=False)
    path = save_model(c, args.output)
    png = plot_fit(args.plot or args.output.with_suffix(".png"), result.levels, fitted, prior)
    console.print(f"wrote [bold]{path}[/] and {png}")
    return 0


# -- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcmlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pcmlab {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="train a digits CNN, deploy it on the mock chip, report "
                       "accuracy over a year")
    _add_chip_options(p, rows=256, cols=512)
    p.add_argument("--output-dir", type=Path, default=Path("pcmlab-demo"),
                   help="where the model, run file and plot go (default ./pcmlab-demo)")
    p.add_argument("--runs", type=int, default=25, help="simulated runs per time point")
    p.add_argument("--epochs", type=int, default=40, help="training epochs")
    p.add_argument("--weight-noise", type=float, default=0.05,
                   help="training weight noise, relative to W_max")
    p.add_argument("--bits", type=int, default=8, help="DAC and ADC bits")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("deploy", help="map a model file onto the mock chip, program it, "
                       "read it for a year, evaluate")
    p.add_argument("model", type=Path, help="model file (pcmlab-model/1, see 'pcmlab train')")
    p.add_argument("--data", type=Path, help=".npz with x_test, y_test (optional x_train, "
                   "y_train to calibrate ranges); default: digits for a digits model")
    p.add_argument("-o", "--output", type=Path, required=True, help="measurement file")
    p.add_argument("--bits", type=int, help="DAC and ADC bits (default: the model's, or 8)")
    p.add_argument("--runs", type=int, default=25, help="simulated runs per time point")
    p.add_argument("--no-tiling", action="store_true", help="refuse layers larger than "
                   "the array instead of splitting them into tiles")
    _add_chip_options(p, rows=256, cols=512)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("evaluate", help="measured accuracy per readout of a deployment file")
    p.add_argument("run", type=Path)
    p.add_argument("--model", type=Path, required=True, help="the model that was deployed")
    p.add_argument("--data", type=Path, help=".npz with x_test, y_test")
    p.add_argument("--bits", type=int, help="DAC and ADC bits")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model for the chip (AnalogNets method)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    p.add_argument("--method", choices=("full", "noise", "float"), default="full",
                   help="full AnalogNets method (default), noise injection only, or float")
    p.add_argument("--model", type=Path, help="your model file to start from (else the "
                   "digits reference CNN)")
    p.add_argument("--data", type=Path, help=".npz with x_train, y_train, x_test, y_test")
    p.add_argument("--bits", type=int, default=8, help="ADC bits (the DAC gets one more)")
    p.add_argument("--epochs1", type=int, default=30, help="stage 1 epochs")
    p.add_argument("--epochs2", type=int, default=20, help="stage 2 epochs")
    p.add_argument("--eta", type=float, default=0.05, help="weight noise / W_max")
    p.add_argument("--alpha", type=float, default=2.5, help="clip at alpha * sigma_W")
    p.add_argument("--quant-noise", type=float, default=0.0,
                   help="share of values left unquantized in stage 2")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ablation", help="off-the-shelf vs noise injection vs full method "
                       "at 8/6/4 bits, simulated over a year")
    p.add_argument("--output-dir", type=Path, default=Path("pcmlab-ablation"))
    p.add_argument("--runs", type=int, default=25, help="simulated runs per time point")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    p.add_argument("--epochs1", type=int, default=30)
    p.add_argument("--epochs2", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("characterize", help="program level sets and read them (read noise, "
                       "drift) into a file for 'pcmlab fit'")
    p.add_argument("-o", "--output", type=Path, required=True, help="measurement file")
    p.add_argument("--cells-per-level", type=int, default=1000)
    p.add_argument("--levels-us", type=float, nargs="+", help="levels (default 11 from 0 "
                   "to 25 µS)")
    p.add_argument("--burst-reads", type=int, default=10, help="repeated reads after t0")
    p.add_argument("--drift-reads", type=int, default=12)
    p.add_argument("--t-end", type=float, default=1e6, help="last drift read, s")
    _add_chip_options(p, rows=128, cols=128)
    p.set_defaults(func=cmd_characterize)

    p = sub.add_parser("fit", help="fit the PCM model to a characterization file")
    p.add_argument("run", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="calibration file to write (.toml or .json)")
    p.add_argument("--plot", type=Path, help="PNG of data against fit (default: beside -o)")
    p.add_argument("--calibration", type=Path, help="prior constants (default: published)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("mock-server", help="serve a mock chip over TCP (SCPI) or a "
                       "pseudo-terminal (framed binary)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="SCPI over TCP, e.g. 127.0.0.1:5025 "
                   "(port 0: any free port)")
    p.add_argument("--pty", action="store_true", help="framed binary on a pseudo-terminal "
                   "(prints its path)")
    p.add_argument("--no-virtual-clock", action="store_true",
                   help="refuse clock advances, like a real chip")
    g = p.add_argument_group("fault injection (rates per request, seeded by --seed)")
    for name in ("drop-request", "drop-reply", "corrupt-reply", "delay-reply", "disconnect"):
        g.add_argument(f"--{name}", type=float, default=0.0, metavar="RATE")
    _add_chip_options(p, rows=512, cols=2048)
    p.set_defaults(func=cmd_mock_server)

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
    p.add_argument("--resource", help="reach the chip here (default: as the file says)")
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
