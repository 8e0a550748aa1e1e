"""Commands about networks: demo, deploy, evaluate, train, ablation."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from pcmlab import __version__
from pcmlab.cli.common import (
    accuracy_table,
    calibration_of,
    console,
    err_console,
    fmt_s,
    log,
    make_driver,
    readout_progress,
    record_of,
    refuse_overwrite,
)
from pcmlab.config import validate_model
from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMModel


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


DEMO_OUTPUTS = ("demo-model.pt", "demo-run.h5", "demo-accuracy.png")


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the reference CNN, deploy it on the mock chip, read it for a year (virtual
    clock) and report accuracy over time, measured beside simulated."""
    from pcmlab.evaluator import AnalogEvaluator, Periphery
    from pcmlab.nn_model import save_model_file
    from pcmlab.plots import plot_accuracy
    from pcmlab.tasks import DIGITS_INPUT_SHAPE
    from protocols.deploy import DeployConfig, deploy_network

    out_dir = args.output_dir
    t_start = time.perf_counter()
    refuse_overwrite(args, *(out_dir / name for name in DEMO_OUTPUTS),
                     advice="it is an earlier demo's result: keep it by writing elsewhere "
                     "(--output-dir DIR), or pass --force to replace the demo's files")
    # every option is checked, and the chip reached, before the training
    periphery = validate_model(Periphery, {"dac_bits": args.bits, "adc_bits": args.bits},
                               "--bits")
    cfg = validate_model(DeployConfig, {"simulated_runs": args.runs, "seed": args.seed,
                                        "periphery": periphery}, "demo options")
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: need at least one simulated run per point")
    pcm = PCMModel(calibration_of(args))
    driver = make_driver(args)
    with driver:
        # chip mode whenever the chip computes products (the mock does)
        cfg = cfg.model_copy(update={"chip_in_the_loop": driver.info.mvm is not None
                                     and not args.no_mvm})
        out_dir.mkdir(parents=True, exist_ok=True)
        model, data = _train_reference(args)
        model_path = save_model_file(model, out_dir / DEMO_OUTPUTS[0],
                                     input_shape=DIGITS_INPUT_SHAPE)
        evaluator = AnalogEvaluator(model, data.x_train, periphery)
        run_path = out_dir / DEMO_OUTPUTS[1]
        with readout_progress(cfg.schedule.times_s().size) as (_, on_wait):
            result = deploy_network(driver, evaluator, data.x_test, data.y_test, run_path,
                                    cfg, pcm=pcm, overwrite=args.force, on_wait=on_wait,
                                    record={**record_of(args, driver),
                                            "data": data.source.to_json()},
                                    x_calibration=data.x_train)
    console.print(f"[bold]pcmlab {__version__} demo[/]: digits CNN on {driver.info.identity}")
    console.print(layers_table(evaluator, result.mapping))
    console.print(f"programming: {100 * result.programming.converged_fraction_nonzero:.2f} % "
                  f"of non-zero devices converged ({result.programming.cells.size} devices)")
    console.print(accuracy_table(result.time_s, result.measured_accuracy, result.simulated,
                                  result.ideal_accuracy,
                                  f"test accuracy, {args.bits}-bit DAC/ADC, "
                                  f"{args.runs} simulated runs per point"))
    if result.chip:
        console.print(chip_table(result, "chip mode: the test set through the chip's MVM"))
    png = plot_accuracy(out_dir / DEMO_OUTPUTS[2], result.time_s,
                        result.measured_accuracy,
                        None if result.simulated is None else result.simulated.time_s,
                        None if result.simulated is None else result.simulated.mean,
                        None if result.simulated is None else result.simulated.std,
                        result.ideal_accuracy,
                        title=f"digits CNN on the mock PCM chip ({args.bits}-bit periphery)",
                        chip=result.chip or None)
    console.print(f"wrote {model_path}, {run_path}, {png} in "
                  f"{time.perf_counter() - t_start:.1f} s")
    return 0


def _model_and_data(model: str, weights: Path | None, data_path: Path | None, *,
                    need_weights: bool = True, digits_seed: int | None = None):
    """The model (a file, or a factory with weights) and its data (--data, else digits
    shaped as the model takes them, split with ``digits_seed`` or the model's seed)."""
    from pcmlab.nn_model import ModelFile, import_factory, is_factory_spec, load_model
    from pcmlab.tasks import load_digits, load_npz_dataset

    if is_factory_spec(model) and weights is None and not need_weights:
        loaded = ModelFile(import_factory(model), None, {}, model)
    else:
        loaded = load_model(model, weights)
    shape = loaded.input_shape
    if data_path is not None:
        data = load_npz_dataset(data_path, shape)
        loaded.input_shape = tuple(data.x_test.shape[1:])
    elif (shape is None and loaded.factory) or (shape is not None and math.prod(shape) == 64):
        seed = digits_seed if digits_seed is not None else loaded.extra.get("data_seed", 0)
        data = load_digits(seed=int(seed),
                           input_shape=shape or _digits_shape_of(loaded.model))
        loaded.input_shape = tuple(data.x_test.shape[1:])
    else:
        raise ConfigError(f"{model} takes inputs {shape}; give its test data with --data "
                          "FILE.npz (x_test, y_test)")
    return loaded, data


def _digits_shape_of(model) -> tuple[int, ...]:
    """The shape in which a model without a recorded input shape takes the digits: tried
    as images (1, 8, 8), then as a sequence of 8 rows (8, 8)."""
    import torch

    declared = getattr(model, "input_shape", None)  # a model may say what it takes
    if declared is not None:
        return tuple(declared)
    for shape in ((1, 8, 8), (8, 8), (64,)):
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(2, *shape))
            return shape
        except (RuntimeError, ValueError, IndexError, AssertionError):
            continue
    raise ConfigError("the model takes no shape of the 64 digits pixels; give its data with "
                      "--data FILE.npz")


def _periphery_for(loaded, bits: int | None):
    from pcmlab.evaluator import Periphery

    stored = loaded.extra.get("periphery") or {}
    data = dict(stored)
    if bits is not None:
        data.update({"dac_bits": bits, "adc_bits": bits})
    return validate_model(Periphery, data, "periphery")


def _evaluator_for(loaded, data, bits: int | None, keep_digital: list[str]):
    """The evaluator of a model: its trained ranges and periphery when it has them
    (and the bits are not overridden), else ranges calibrated on the data."""
    from pcmlab.evaluator import AnalogEvaluator
    from pcmlab.training import ranges_from_extra

    ranges = ranges_from_extra(loaded.extra) if bits is None else None
    keep = keep_digital or list(loaded.extra.get("keep_digital", []))
    evaluator = AnalogEvaluator(loaded.model, data.x_train, _periphery_for(loaded, bits),
                                ranges=ranges, keep_digital=keep)
    learned = (loaded.extra.get("aihwkit") or {}).get("input_ranges")
    if learned and bits is None:  # an aihwkit model: its learned DAC ranges
        from pcmlab.bridge.aihwkit_checkpoint import with_input_ranges

        evaluator.use_ranges(with_input_ranges(evaluator.ranges, learned))
    return evaluator


def aihwkit_table(loaded) -> Table | None:
    """What a deploy took from an aihwkit model, and what it could not."""
    info = loaded.extra.get("aihwkit")
    if not info:
        return None
    table = Table(title="from aihwkit", show_header=True)
    table.add_column("", justify="left")
    table.add_column("what", justify="left", overflow="fold")
    for line in info.get("mapped", []):
        table.add_row("mapped", line)
    for line in info.get("not_mapped", []):
        table.add_row("not mapped", line)
    return table


def chip_table(result, title: str) -> Table:
    """Chip-mode accuracy per readout beside measured (reads) and the float model."""
    table = Table(title=title, caption="chip: uncorrected ADC outputs; + GDC: global drift "
                  "compensation from the chip's own summed response; calibrated: per-column "
                  "scale and offset fitted on the chip's outputs for a calibration batch, "
                  f"once after programming or again at each time; float model "
                  f"{100 * result.ideal_accuracy:.2f} %")
    for col in ("time", "measured %", "chip %", "+ GDC %", "calibrated once %",
                "recalibrated %"):
        table.add_column(col, justify="right")
    for row in result.chip:
        i = int(np.argmin(np.abs(result.time_s - row.time_s)))
        table.add_row(fmt_s(row.time_s), f"{100 * result.measured_accuracy[i]:.2f}",
                      f"{100 * row.uncorrected:.2f}", f"{100 * row.drift_compensated:.2f}",
                      f"{100 * row.calibrated_once:.2f}", f"{100 * row.recalibrated:.2f}")
    return table


def layers_table(evaluator, mapping=None) -> Table:
    """Which layers went on the chip and which did not, and why; devices per layer."""
    devices = {} if mapping is None else {lm.name: lm.n_cells for lm in mapping.layers}
    table = Table(title="layers", show_header=True)
    for col, just in (("layer", "left"), ("type", "left"), ("where", "left"),
                      ("why", "left"), ("parameters", "right"), ("devices", "right")):
        table.add_column(col, justify=just, overflow="fold")
    for r in evaluator.report:
        n = sum(v for k, v in devices.items() if k == r.name or k.startswith(r.name + "."))
        table.add_row(r.name, r.kind, r.placement, r.reason, str(r.weights) if r.weights
                      else "", str(n) if n else "")
    if mapping is not None:
        per = mapping.utilization_per_array()
        where = (f"the {mapping.rows} x {mapping.cols} array" if len(per) == 1 else
                 f"{len(per)} arrays of {mapping.rows} x {mapping.cols} ("
                 + ", ".join(f"{100 * u:.1f} %" for u in per) + ")")
        table.caption = (f"{len(mapping.layers)} weight matrices, "
                         f"{100 * mapping.array_utilization():.2f} % of {where}")
    return table


def cmd_deploy(args: argparse.Namespace) -> int:
    from protocols.deploy import DeployConfig, deploy_network

    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: need at least one simulated run per time "
                          "point (the simulated column of the table)")
    loaded, data = _model_and_data(args.model, args.weights, args.data)
    if args.mvm and data.x_train is data.x_test:  # load_npz_dataset's stand-in
        raise ConfigError(f"--mvm: the chip-in-the-loop calibration fits on training "
                          f"inputs, and {args.data} has none; add x_train, y_train to it "
                          "(the test set is never used to calibrate)")
    evaluator = _evaluator_for(loaded, data, args.bits, args.keep_digital)
    periphery = evaluator.periphery
    cfg = validate_model(DeployConfig, {"simulated_runs": args.runs, "seed": args.seed,
                                        "periphery": periphery, "tiling": not args.no_tiling,
                                        "parts": args.parts, "chip_in_the_loop": args.mvm},
                         "deploy options")
    calibration = calibration_of(args)
    n = cfg.schedule.times_s().size
    driver = make_driver(args)
    with driver:
        if args.mvm and driver.info.mvm is None:
            raise ConfigError(f"--mvm: the chip {driver.info.identity} has no MVM capability "
                              "(it does not compute matrix-vector products); deploy without "
                              "--mvm for measured mode, or use a chip with MVM")
        with readout_progress(n) as (_, on_wait):
            result = deploy_network(
                driver, evaluator, data.x_test, data.y_test, args.output, cfg,
                pcm=PCMModel(calibration), on_wait=on_wait,
                record={**record_of(args, driver), "keep_digital": list(args.keep_digital),
                        "model": str(args.model),
                        "weights": None if args.weights is None else str(args.weights),
                        "bits": args.bits, "calibration": calibration.model_dump(mode="json"),
                        "data": data.source.to_json()},
                x_calibration=data.x_train)
    from_aihwkit = aihwkit_table(loaded)
    if from_aihwkit is not None:
        console.print(from_aihwkit)
    console.print(layers_table(evaluator, result.mapping))
    console.print(accuracy_table(result.time_s, result.measured_accuracy, result.simulated,
                                  result.ideal_accuracy, f"{Path(str(args.model)).name} on "
                                  f"{driver.info.identity}"))
    if result.chip:
        console.print(chip_table(result, "chip mode: the test set through the chip's MVM"))
    written = ", ".join(str(p) for p in result.part_paths) or str(args.output)
    console.print(f"wrote [bold]{written}[/]")
    if result.programming.interrupted:
        err_console.print("[yellow]interrupted[/] during programming: no readouts; deploy "
                          "again", highlight=False)
        return 130
    if result.readouts_taken < n:
        err_console.print(f"[yellow]stopped[/] after {result.readouts_taken} of {n} readouts "
                          "(the evaluation covers those); continue with 'pcmlab resume "
                          f"{args.output}'", highlight=False)
        return 130
    return 0


def recorded_bits(run: Path, bits: int | None) -> int | None:
    """The DAC/ADC bits to evaluate a deployment with: ``--bits`` if given, else the ones
    it was deployed with (``deploy --bits N`` records them), else the model's own."""
    if bits is not None:
        return bits
    from pcmlab.store import RunReader

    with RunReader(run) as r:
        stored = r.config.get("bits")
    return None if stored is None else int(stored)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from protocols.deploy import evaluate_file

    stored_keep, recorded = _deployment_record(args.run)
    keep = list(args.keep_digital) or stored_keep
    data_path, digits_seed = args.data, None
    if args.data is None and recorded is not None:
        data_path, digits_seed = _find_recorded_data(args.run, recorded)
    loaded, data = _model_and_data(args.model, args.weights, data_path,
                                   digits_seed=digits_seed)
    if recorded is None:
        console.print(f"note: {args.run} does not record the data it was evaluated on; "
                      f"evaluating on {data.source.describe()}")
    elif data.source.sha256 != recorded.sha256:
        if args.data is None:
            raise ConfigError(f"{data_path or 'the digits split'} is not the data {args.run} "
                              f"was evaluated on ({recorded.describe()}; found "
                              f"{data.source.describe()}); pass that data with --data "
                              "FILE.npz, or other data with --data to evaluate on it anyway")
        console.print(f"note: --data {args.data} is not the data {args.run} was evaluated on "
                      f"({recorded.describe()}); evaluating on {data.source.describe()}",
                      highlight=False)
    evaluator = _evaluator_for(loaded, data, recorded_bits(args.run, args.bits), keep)
    time_s, accuracy = evaluate_file(args.run, evaluator, data.x_test, data.y_test)
    simulated = _stored_simulated(args.run, evaluator,
                                  recorded is None or data.source.sha256 == recorded.sha256)
    console.print(accuracy_table(time_s, accuracy, simulated,
                                  evaluator.ideal_accuracy(data.x_test, data.y_test),
                                  f"measured accuracy of {args.run.name}"))
    return 0


def resume_deploy(args: argparse.Namespace, stored: dict, n: int) -> int:
    """``pcmlab resume`` of a stopped deployment: the network and data it recorded, the
    chip it ran on (the in-process mock chip rebuilt from its seed and brought to where
    the deployment stopped, or the chip at --resource / the recorded resource)."""
    from drivers import ChipGroup, open_driver
    from drivers.mock import MockDriver
    from mock_chip import MockChipConfig
    from pcmlab.pcm_model import PCMCalibration
    from pcmlab.tasks import DataSource
    from protocols.deploy import replay_deployment, resume_deployment

    source = f"{args.run} (stored configuration)"
    if "model" not in stored:
        raise ConfigError(f"{args.run} does not record the network it deployed (a file from "
                          "an earlier pcmlab, or a deployment from Python): resume it from "
                          "Python with protocols.deploy.resume_deployment")
    if stored.get("data") is None:
        raise ConfigError(f"{args.run} does not record the data it was evaluated on; "
                          "resume it from Python with protocols.deploy.resume_deployment")
    data_path, digits_seed = _find_recorded_data(args.run, DataSource.from_json(stored["data"]))
    weights = None if stored.get("weights") is None else Path(stored["weights"])
    loaded, data = _model_and_data(stored["model"], weights, data_path,
                                   digits_seed=digits_seed)
    evaluator = _evaluator_for(loaded, data, stored.get("bits"),
                               list(stored.get("keep_digital", [])))
    pcm = PCMModel(validate_model(PCMCalibration, stored.get("calibration", {}), source))
    resource = args.resource or stored.get("resource", "mock")
    rebuilt = resource == "mock"
    if not rebuilt:
        driver = open_driver(resource)
    elif "chips" in stored:
        driver = ChipGroup([MockDriver(config=validate_model(MockChipConfig, c, source))
                            for c in stored["chips"]])
    else:
        driver = MockDriver(config=validate_model(MockChipConfig, stored["chip"], source))
    with driver:
        if rebuilt:  # the in-process chip died with the deployment: rebuilt and replayed
            replay_deployment(driver, args.run, evaluator)
        with readout_progress(n) as (_, on_wait):
            before, after = resume_deployment(driver, args.run, evaluator, data.x_test,
                                              data.y_test, pcm=pcm, on_wait=on_wait)
    console.print(f"{args.run}: {before} readouts were there, {after} of {n} now; "
                  "evaluation made again over every readout")
    return 0 if after == n else 130


def _stored_simulated(path: Path, evaluator, same_data: bool):  # -> SimulatedAccuracy | None
    """The simulated accuracy the deployment stored, when it is of this evaluation: the
    same data and periphery (else None, and the table says '-')."""
    import json

    from pcmlab.evaluator import SimulatedAccuracy
    from pcmlab.store import RunReader

    with RunReader(path) as run:
        stored = run.evaluation() or {}
    if "simulated_accuracy_runs" not in stored:
        return None
    periphery = stored.get("periphery")
    if not same_data or (periphery is not None and json.loads(periphery)
                         != evaluator.periphery.model_dump(mode="json")):
        console.print(f"note: the simulated accuracy {path.name} holds is of other data or "
                      "another periphery; not shown")
        return None
    return SimulatedAccuracy(np.asarray(stored["simulated_time_s"], dtype=np.float64),
                             np.asarray(stored["simulated_accuracy_runs"], dtype=np.float64))


def _deployment_record(path: Path):  # -> (list[str], DataSource | None)
    """What a deployment's file recorded: the layers kept digital, and the data it was
    evaluated on (None for a file from before data was recorded)."""
    from pcmlab.store import RunReader
    from pcmlab.tasks import DataSource

    if not path.is_file():
        raise ConfigError(f"{path}: no such measurement file")
    with RunReader(path) as run:
        config = run.config
    data = config.get("data")
    return (list(config.get("keep_digital", [])),
            None if data is None else DataSource.from_json(data))


def _find_recorded_data(run: Path, recorded) -> tuple[Path | None, int | None]:
    """Where the data a deployment recorded is now: (an .npz path, or None and the digits
    seed). The path as given (from here), as it resolved then, and beside the run file."""
    if recorded.name == "digits":
        return None, recorded.seed
    given = Path(recorded.path)
    for candidate in (given, Path(recorded.resolved_path or given), run.parent / given.name):
        if candidate.is_file():
            return candidate, None
    raise ConfigError(f"{run} was evaluated on {recorded.describe()}; that file is neither "
                      f"at {given}, nor at {recorded.resolved_path}, nor beside the run; pass "
                      "it with --data FILE.npz")


def _epoch_log(bar: Progress, task):
    def on_epoch(stage: str, epoch: int, loss: float, acc: float) -> None:
        bar.update(task, advance=1, log=f"{stage} epoch {epoch}")
        bar.console.print(f"{stage:>8} epoch {epoch:3d}  loss {loss:.4f}  "
                          f"train accuracy {100 * acc:.2f} %", highlight=False)
    return on_epoch


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model for the chip: float, noise injection, or the full AnalogNets method."""
    import torch

    from pcmlab.nn_model import save_model_file, save_weights_file
    from pcmlab.tasks import (
        DIGITS_INPUT_SHAPE,
        load_digits,
        load_npz_dataset,
        reference_cnn,
        train_classifier,
    )
    from pcmlab.training import TrainingConfig, train_analognets

    refuse_overwrite(args, args.output)
    cfg = validate_model(TrainingConfig, {
        "stage1_epochs": args.epochs1, "stage2_epochs": args.epochs2, "eta": args.eta,
        "alpha": args.alpha, "adc_bits": args.bits, "quant_noise": args.quant_noise,
        "seed": args.seed}, "training options")
    factory = None
    if args.model is not None:
        loaded, data = _model_and_data(args.model, args.weights, args.data, need_weights=False)
        model, input_shape, factory = loaded.model, loaded.input_shape, loaded.factory
    else:
        if args.weights is not None:
            raise ConfigError("--weights goes with --model pkg.module:factory")
        model, input_shape = reference_cnn(args.seed), DIGITS_INPUT_SHAPE
        data = (load_npz_dataset(args.data, DIGITS_INPUT_SHAPE) if args.data is not None
                else load_digits(seed=args.seed))
    data.require_training_split("pcmlab train")
    total = cfg.stage1_epochs + (cfg.stage2_epochs if args.method == "full" else 0)
    with Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.fields[log]}"),
                  console=err_console, transient=True) as bar:
        on_epoch = _epoch_log(bar, bar.add_task("train", total=total, log=""))
        if args.method == "full":
            result = train_analognets(model, data.x_train, data.y_train, cfg,
                                      on_epoch=on_epoch,
                                      keep_digital=tuple(args.keep_digital))
            model, extra = result.model, result.extra()
            if result.folded_batchnorm:
                extra["batchnorm_folded_in_training"] = result.folded_batchnorm
        else:
            eta = cfg.eta if args.method == "noise" else 0.0
            model = train_classifier(
                model, data.x_train, data.y_train, epochs=total, weight_noise=eta,
                seed=args.seed,
                on_epoch=lambda e, loss, acc: on_epoch(args.method, e, loss, acc))
            extra = {}
    extra["method"] = args.method
    extra["data_seed"] = args.seed
    extra["keep_digital"] = list(args.keep_digital)
    if factory is not None:
        path = save_weights_file(model, args.output, factory=factory, input_shape=input_shape,
                                 extra=extra)
    else:
        path = save_model_file(model, args.output, input_shape=input_shape, extra=extra)
    with torch.no_grad():
        acc = float((model.eval()(data.x_test).argmax(1) == data.y_test).float().mean())
    console.print(f"wrote [bold]{path}[/] ({args.method}); float test accuracy "
                  f"{100 * acc:.2f} %")
    if extra.get("batchnorm_folded_in_training"):
        folded = extra["batchnorm_folded_in_training"]
        console.print(f"BatchNorm trained folded into the layer before it ({', '.join(folded)}"
                      "): saved in your model's form, as the identity (mean 0, variance "
                      "1 - eps, weight 1) with its scale in that layer's weights; your "
                      "model loads the file's 'state_dict' with load_state_dict",
                      highlight=False)
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    """The AnalogNets ablation on the reference task, in simulated mode."""
    from pcmlab.ablation import run_ablation
    from pcmlab.pcm_model import ACCURACY_TIME_LABELS
    from pcmlab.plots import plot_sweep
    from pcmlab.sweep import open_sweep
    from pcmlab.tasks import load_digits, load_npz_dataset
    from pcmlab.training import TrainingConfig

    cfg = validate_model(TrainingConfig, {"stage1_epochs": args.epochs1,
                                          "stage2_epochs": args.epochs2, "seed": args.seed},
                         "training options")
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: need at least one simulated run")
    out_dir = args.output_dir
    refuse_overwrite(args, out_dir / "ablation.md", out_dir / "ablation.png",
                     out_dir / "ablation.nc")
    model = None
    if args.model is not None:
        loaded, data = _model_and_data(args.model, None, args.data, need_weights=False)
        model = loaded.model
    else:
        data = (load_npz_dataset(args.data, (1, 8, 8)) if args.data is not None
                else load_digits(seed=args.seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    from pcmlab.cli.sweeps import task_progress

    with task_progress("ablation") as progress:
        rows = run_ablation(data, out_dir / "ablation.nc", bits=tuple(args.bits),
                            runs=args.runs, config=cfg, seed=args.seed, model=model,
                            progress=progress, workers=args.workers)
    what = args.model or "digits CNN"
    table = Table(title=f"AnalogNets ablation, {what}, simulated ({args.runs} runs), "
                  "test accuracy %")
    for col in ("method", "ADC/DAC bits", *ACCURACY_TIME_LABELS):
        table.add_column(col, justify="right")
    lines = ["| method | ADC/DAC bits | " + " | ".join(ACCURACY_TIME_LABELS) + " |",
             "|---|---|" + "---|" * len(ACCURACY_TIME_LABELS)]
    for r in rows:
        cells = [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(r.mean, r.std, strict=True)]
        table.add_row(r.method, f"{r.adc_bits}/{r.dac_bits}", *cells)
        lines.append(f"| {r.method} | {r.adc_bits}/{r.dac_bits} | " + " | ".join(cells) + " |")
    console.print(table)
    (out_dir / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    png = plot_sweep(out_dir / "ablation.png", open_sweep(out_dir / "ablation.nc"),
                     curves="training", title=f"AnalogNets ablation, {what}")
    console.print(f"wrote {out_dir / 'ablation.md'}, {png} and {out_dir / 'ablation.nc'} in "
                  f"{time.perf_counter() - t_start:.0f} s")
    return 0
