"""Commands about chips and measurement files: program, run, resume, inspect, plot,
characterize, fit, mock-server."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from pcmlab.analysis import convergence_by_level, group_levels
from pcmlab.cli.common import (
    calibration_of,
    console,
    convergence_table,
    err_console,
    fmt_s,
    make_driver,
    program_config,
    readout_progress,
    record_of,
    refuse_overwrite,
    run_program,
)
from pcmlab.config import load_model, validate_model
from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMModel


def _driver_for_run(config, source: str):  # (RunConfig) -> CrossbarDriver
    """The driver a run's configuration names: the in-process mock chip, or a resource."""
    from drivers import open_driver
    from drivers.mock import MockDriver
    from mock_chip import MockChipConfig

    if config.resource == "mock":
        return MockDriver(config=validate_model(MockChipConfig, config.chip,
                                                f"{source} [chip]"))
    if config.dialect is not None:
        from pcmlab.scpi import load_dialect

        path = Path(config.dialect)
        if not path.is_absolute():  # relative to the configuration file
            path = Path(source).resolve().parent / path
        return open_driver(config.resource, dialect=load_dialect(path))
    return open_driver(config.resource)


def cmd_program(args: argparse.Namespace) -> int:
    cfg = program_config(args)
    driver = make_driver(args)
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
        from protocols.program_verify import check_target_unit

        check_target_unit(info, targets, cfg)  # before anything is printed or pulsed
        console.print(f"chip [bold]{info.identity}[/]: {info.geometry.rows} x "
                      f"{info.geometry.cols}; programming {cells.size} cells")
        t_start = time.perf_counter()
        result = run_program(driver, cells, targets, cfg)
        wall_s = time.perf_counter() - t_start
        g_t0 = None
        if info.virtual_clock:
            driver.clock.sleep_until(result.end_s + PCMModel().calibration.t0_s)
            g_t0 = driver.read(cells)
    groups = group_levels(targets)
    console.print(f"target levels: {groups.describe()}")
    rows = convergence_by_level(targets, result.g_us, result.converged, result.iterations,
                                g_t0_us=g_t0, groups=groups)
    console.print(convergence_table(rows, "convergence per target level"))
    console.print(f"{100 * result.converged_fraction_nonzero:.2f} % of non-zero cells converged"
                  f" in {wall_s:.2f} s wall, {result.n_driver_calls} driver calls"
                  + ("  [yellow](interrupted)[/]" if result.interrupted else ""))
    if result.interrupted:
        err_console.print("[yellow]interrupted[/]: program-and-verify stopped between driver "
                          "calls; the table shows the cells as they were left")
        return 130
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from protocols.experiment import RunConfig, measure_run
    from protocols.program_verify import ProgramProgress

    config = load_model(RunConfig, args.config)
    if args.resource:
        config = config.model_copy(update={"resource": args.resource})
    output = args.output or Path(time.strftime("run-%Y%m%d-%H%M%S.h5"))
    driver = _driver_for_run(config, str(args.config))
    try:  # every target checked against the chip before any work
        config.targets.resolve(driver.info, args.config.parent)
    except ConfigError as exc:
        driver.close()
        raise ConfigError(f"{args.config}: {exc}") from None
    n = config.schedule.times_s().size
    with driver, readout_progress(n) as (bar, on_wait):
        pv = bar.add_task("program-and-verify", total=config.program.max_iterations, next="")

        def on_program(p: ProgramProgress) -> None:
            bar.update(pv, completed=p.iteration,
                       next=f"{100 * p.n_converged / max(p.n_total, 1):.1f} % converged")

        result, taken = measure_run(driver, config, output, config_dir=args.config.parent,
                                       program_progress=on_program, on_wait=on_wait)
    if result.interrupted:
        err_console.print(
            f"[yellow]interrupted[/] during programming ({result.cells.size} cells, "
            f"{100 * result.converged_fraction_nonzero:.2f} % of non-zero converged so far): "
            f"{output} keeps the programming state but no readouts, and a run resumes only "
            "after complete programming; start the run again (pcmlab run ... -o NEW.h5)")
        return 130
    console.print(f"programmed {result.cells.size} cells on {driver.info.identity}: "
                  f"{100 * result.converged_fraction_nonzero:.2f} % of non-zero converged")
    state = "complete" if taken == n else f"stopped after {taken}; continue with " \
        f"'pcmlab resume {output}'"
    console.print(f"readouts: {taken} of {n} ({state})")
    console.print(f"wrote [bold]{output}[/]")
    return 0 if taken == n else 130


def cmd_resume(args: argparse.Namespace) -> int:
    from drivers import open_driver
    from drivers.mock import MockDriver
    from mock_chip import MockChipConfig
    from pcmlab.store import RunReader
    from pcmlab.store.writer import refuse_if_written
    from protocols.experiment import RunConfig, replay_programming, resume_run
    from protocols.program_verify import ProgramVerifyConfig

    source = f"{args.run} (stored configuration)"
    refuse_if_written(args.run)
    with RunReader(args.run) as run:
        stored = run.config
        n = run.schedule_time_s.size
        done = run.n_readouts
    if done >= n:
        console.print(f"{args.run}: {done} readouts were there, {done} of {n} now "
                      "(complete: nothing to resume)")
        return 0
    if "deploy" in stored:  # a network deployment: continued, then evaluated again
        from pcmlab.cli.network import resume_deploy

        return resume_deploy(args, stored, n)
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
        with readout_progress(n) as (_, on_wait):
            before, after = resume_run(driver, args.run, on_wait=on_wait)
    console.print(f"{args.run}: {before} readouts were there, {after} of {n} now")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from pcmlab.store import RunWriter

    kept = RunWriter.recover(args.run)
    if kept is None:
        console.print(f"{args.run} is closed already; nothing changed")
    else:
        console.print(f"{args.run}: closed, with {kept} complete readouts; any HDF5 tool "
                      "opens it now ('pcmlab resume' still continues the run)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pcmlab.analysis import drift_by_level
    from pcmlab.store import RunReader
    from pcmlab.sweep import is_sweep_file

    if args.run.is_file() and is_sweep_file(args.run):
        from pcmlab.cli.sweeps import inspect_sweep

        return inspect_sweep(args.run)

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
            info.add_row("read times", f"{fmt_s(ro.time_s[0])} .. {fmt_s(ro.time_s[-1])} "
                                       "after programming")
        for entry in run.interruptions:
            info.add_row("interruption", ", ".join(f"{k}={v}" for k, v in entry.items()))
        console.print(info)
        if prog is None:
            console.print("[yellow]programming never finished in this file[/]")
            return 0
        groups = group_levels(targets.conductance_us)
        console.print(f"target levels: {groups.describe()}")
        rows = convergence_by_level(targets.conductance_us, prog.conductance_us,
                                    prog.converged, prog.iterations, groups=groups)
        console.print(convergence_table(rows, "programming"))
        ro = run.readouts()
        drift_reads = int((ro.time_s >= PCMModel().calibration.t0_s).sum())
        if drift_reads < 2:
            console.print(f"drift: {drift_reads} readout(s) at or after t0; the fit needs two")
        else:
            drift = drift_by_level(targets.conductance_us, ro.time_s, ro.conductance_us,
                                   mask=prog.converged, groups=groups)
            table = Table(title="drift per level (fitted per device) beside the model")
            for col in ("G_T µS", "cells", "G first", "G last", "ν mean", "ν median", "ν std",
                        "model μ_ν", "model σ_ν"):
                table.add_column(col, justify="right")
            for d in drift:
                table.add_row(d.label, str(d.cells), f"{d.g_first_mean_us:.2f}",
                              f"{d.g_last_mean_us:.2f}", f"{d.nu_mean:.4f}",
                              f"{d.nu_median:.4f}", f"{d.nu_std:.4f}",
                              f"{d.model_nu_mean:.4f}", f"{d.model_nu_std:.4f}")
            console.print(table)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pcmlab.plots import check_figure_path, plot_run
    from pcmlab.store import RunReader
    from pcmlab.sweep import is_sweep_file

    if args.run.is_file() and is_sweep_file(args.run):
        from pcmlab.cli.sweeps import plot_sweep_file

        return plot_sweep_file(args.run, args.output, args.curves, args)
    if args.curves is not None:
        raise ConfigError("--curves is for a sweep result (pcmlab sweep); "
                          f"{args.run} is a measurement file")

    if args.output is not None:
        check_figure_path(args.output)
    refuse_overwrite(args, args.output or args.run.with_suffix(".png"))
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
    from pcmlab.scpi import load_dialect

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
                            virtual_clock=not args.no_virtual_clock,
                            violations=frozenset(args.break_rule))
    if args.idle_timeout <= 0:
        raise ConfigError(f"--idle-timeout {args.idle_timeout}: give a positive number of "
                          "seconds")
    if args.dialect is not None and args.tcp is None:
        raise ConfigError("--dialect is for the SCPI server (--tcp); the serial protocol has "
                          "no dialects")
    if args.tcp is not None:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--tcp {args.tcp!r}: expected HOST:PORT, e.g. 127.0.0.1:5025")
        if int(port) > 65535:
            raise ConfigError(f"--tcp {args.tcp!r}: port {port} is outside 0..65535 (0: any "
                              "free port)")
        try:
            server = ScpiServer(controller, host, int(port), faults=faults,
                                dialect=None if args.dialect is None
                                else load_dialect(args.dialect),
                                idle_timeout_s=args.idle_timeout)
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


def cmd_characterize(args: argparse.Namespace) -> int:
    """Program level sets, read them for read noise and drift, into a file for 'fit'."""
    from protocols.characterize import CharacterizeConfig, characterize

    data: dict[str, object] = {"cells_per_level": args.cells_per_level,
                               "burst_reads": args.burst_reads, "t_end_s": args.t_end,
                               "drift_reads": args.drift_reads}
    if args.levels_us is not None:
        data["levels_us"] = args.levels_us
    cfg = validate_model(CharacterizeConfig, data, "characterize options")
    driver = make_driver(args)
    with driver, readout_progress(cfg.times_s().size) as (_, on_wait):
        result, taken = characterize(driver, args.output, cfg, on_wait=on_wait,
                                     record=record_of(args, driver))
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
    from pcmlab.plots import check_figure_path, plot_fit

    if args.output.suffix.lower() not in (".toml", ".json"):
        raise ConfigError(f"{args.output}: the calibration is written as .toml or .json; "
                          "choose a file name with one of these suffixes")
    check_figure_path(args.plot or args.output.with_suffix(".png"))
    if not args.run.is_file():
        raise ConfigError(f"{args.run}: no such file (a characterization from 'pcmlab "
                          "characterize')")
    refuse_overwrite(args, args.output, args.plot or args.output.with_suffix(".png"),
                     getattr(args, "aihwkit", None))
    if args.aihwkit is not None and args.aihwkit.suffix not in (".py", ".json"):
        raise ConfigError(f"--aihwkit {args.aihwkit}: a Python module (.py) or JSON (.json)")
    prior_cal = calibration_of(args)
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
    if result.faults is not None:
        f = result.faults
        console.print("faulty devices: " + ";  ".join(
            f"{name} {100 * f.rate(counted):.2f} % ({counted[0]} of {counted[1]} cells)"
            for name, counted in (("stuck-RESET", f.stuck_reset), ("stuck-SET", f.stuck_set),
                                  ("weak", f.weak)))
            + f";  stuck-SET at {c.stuck_set_range_us[0]:.1f}..{c.stuck_set_range_us[1]:.1f}"
            f" µS, weak ceiling {c.weak_ceiling_range_us[0]:.1f}.."
            f"{c.weak_ceiling_range_us[1]:.1f} µS", highlight=False)
    path = save_model(c, args.output)
    png = plot_fit(args.plot or args.output.with_suffix(".png"), result.levels, fitted, prior)
    console.print(f"wrote [bold]{path}[/] and {png}")
    if args.aihwkit is not None:
        from pcmlab.bridge.aihwkit import write_aihwkit_module

        write_aihwkit_module(c, args.aihwkit, origin=f"the fit of {args.run.name}")
        console.print(f"wrote [bold]{args.aihwkit}[/]: the fitted model for aihwkit "
                      "(docs/aihwkit.md)")
    return 0
