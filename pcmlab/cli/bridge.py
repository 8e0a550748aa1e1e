"""Commands of the aihwkit bridge: the PCM model out to aihwkit, a deployment's measured
conductances out in aihwkit's Fusion layout, and such a file evaluated in pcmlab."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from pcmlab.cli.common import calibration_of, console, fmt_s, refuse_overwrite
from pcmlab.errors import ConfigError


def cmd_aihwkit_export(args: argparse.Namespace) -> int:
    """The calibrated PCM model (or the published one) as an aihwkit module or JSON."""
    from pcmlab.bridge.aihwkit import NOT_EXPRESSED, write_aihwkit_module

    refuse_overwrite(args, args.output)
    origin = str(args.calibration) if args.calibration else "the published constants"
    path = write_aihwkit_module(calibration_of(args), args.output, origin=origin)
    console.print(f"wrote [bold]{path}[/] ({origin}); aihwkit cannot express:")
    for line in NOT_EXPRESSED:
        console.print(f"  - {line}", highlight=False)
    return 0


def _readout_index(time_s: np.ndarray, args: argparse.Namespace) -> int:
    if args.readout is not None:
        if not -time_s.size <= args.readout < time_s.size:
            raise ConfigError(f"--readout {args.readout}: the file has {time_s.size} "
                              f"readouts (0 to {time_s.size - 1})")
        return int(args.readout) % time_s.size
    if args.time is None:
        return time_s.size - 1
    k = int(np.argmin(np.abs(np.log(time_s.clip(1e-9)) - np.log(max(args.time, 1e-9)))))
    if not 0.5 <= time_s[k] / args.time <= 2.0:
        raise ConfigError(f"--time {args.time:g} s: the nearest readout is at "
                          f"{time_s[k]:.1f} s; give a time the file has (readouts from "
                          f"{time_s[0]:.1f} to {time_s[-1]:.1f} s) or --readout N")
    return k


def fusion_record_path(csv: Path) -> Path:
    """The file beside a Fusion CSV that says how it was made: the DAC/ADC bits of the
    deployment (the CSV layout is aihwkit's and has no room for them)."""
    return csv.with_name(csv.name + ".pcmlab.json")


def _fusion_bits(args: argparse.Namespace) -> int | None:
    """``--bits``, else the bits fusion-export recorded beside the CSV (None: the model's
    own periphery), else refused: a Fusion CSV does not say which converters read it."""
    if args.bits is not None:
        return int(args.bits)
    record = fusion_record_path(args.csv)
    if not record.is_file():
        raise ConfigError(f"{args.csv}: no {record.name} beside it saying the DAC/ADC bits "
                          "the deployment used; give --bits N (as deployed)")
    try:
        bits = json.loads(record.read_text(encoding="utf-8"))["bits"]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{record}: not a pcmlab Fusion record ({exc}); give --bits N") \
            from None
    return None if bits is None else int(bits)


def cmd_fusion_export(args: argparse.Namespace) -> int:
    """One readout of a deployment as aihwkit's Fusion CSV."""
    from pcmlab.bridge.fusion import fusion_from_conductances, write_fusion_csv
    from pcmlab.cli.network import _evaluator_for, _model_and_data
    from protocols.deploy import deployment_readouts

    refuse_overwrite(args, args.output)
    from pcmlab.cli.network import recorded_bits

    loaded, data = _model_and_data(args.model, args.weights, args.data)
    bits = recorded_bits(args.run, None)
    evaluator = _evaluator_for(loaded, data, bits, args.keep_digital)
    mapping, readouts = deployment_readouts(args.run, evaluator)
    k = _readout_index(readouts.time_s, args)
    layers = fusion_from_conductances(loaded.model, evaluator, mapping,
                                      torch.from_numpy(readouts.conductance_us[k]))
    write_fusion_csv(layers, args.output)
    fusion_record_path(args.output).write_text(json.dumps(
        {"run": str(args.run), "readout": k, "time_s": float(readouts.time_s[k]),
         "bits": bits}), encoding="utf-8")
    table = Table(title=f"{args.run.name}, readout {k} at {fmt_s(readouts.time_s[k])} "
                  "in the Fusion layout", caption="value per weight: (G+ - G-) x sign(W), "
                  "µS; aihwkit's fusion_import reads it")
    for col in ("layer", "aihwkit class", "outputs x inputs", "mean µS", "negative"):
        table.add_column(col, justify="right")
    for x in layers:
        table.add_row(x.name, x.kind, f"{x.height} x {x.width}",
                      f"{x.conductance_us.mean():.3f}",
                      str(int((x.conductance_us < 0).sum())))
    console.print(table)
    said = "the model's own" if bits is None else str(bits)
    console.print(f"wrote [bold]{args.output}[/] (and {fusion_record_path(args.output).name}: "
                  f"the deployment's DAC/ADC bits, {said})")
    return 0


def cmd_fusion_evaluate(args: argparse.Namespace) -> int:
    """A network's accuracy with its weights from a Fusion CSV, as fusion_import forms
    them (no drift compensation beyond its per-output fit)."""
    from pcmlab.bridge.fusion import read_fusion_csv, weights_from_fusion
    from pcmlab.cli.network import _evaluator_for, _model_and_data

    loaded, data = _model_and_data(args.model, args.weights, args.data)
    bits = _fusion_bits(args)
    evaluator = _evaluator_for(loaded, data, bits, args.keep_digital)
    names = [name for name, _ in evaluator.network.layers]
    fusion = weights_from_fusion(read_fusion_csv(args.csv), dict(zip(
        names, evaluator.weights, strict=True)))
    missing = [n for n in names if n not in fusion]
    if missing:
        raise ConfigError(f"{args.csv} has no values for the analog layers "
                          f"{', '.join(missing)}; keep them digital (--keep-digital)")
    weights = [fusion[n] for n in names]
    acc = evaluator.accuracy(data.x_test, data.y_test, weights)
    ideal = evaluator.ideal_accuracy(data.x_test, data.y_test)
    console.print(f"{args.csv.name}: accuracy {100 * acc:.2f} % with the Fusion file's "
                  f"conductances, {evaluator.periphery.dac_bits}-bit DAC, "
                  f"{evaluator.periphery.adc_bits}-bit ADC (float model {100 * ideal:.2f} %)")
    return 0


def add_bridge_parsers(sub, add_model_options, output_file) -> None:
    p = sub.add_parser("aihwkit", help="the bridge to IBM aihwkit: the PCM model out, "
                       "measured conductances out (Fusion layout) and back")
    bridge = p.add_subparsers(dest="aihwkit_command", required=True, metavar="COMMAND")
    q = bridge.add_parser("export", help="the PCM model as an aihwkit noise model (.py "
                          "module needing no pcmlab) or its constants (.json)")
    q.add_argument("-o", "--output", type=output_file, required=True)
    q.add_argument("--calibration", type=Path, help="from 'pcmlab fit' (default: the "
                   "published constants)")
    q.add_argument("--force", action="store_true", help="replace OUTPUT")
    q.set_defaults(func=cmd_aihwkit_export)

    q = bridge.add_parser("fusion-export", help="one readout of a deployment as the CSV "
                          "aihwkit's fusion_import reads")
    q.add_argument("run", type=Path, help="deployment file (pcmlab deploy)")
    q.add_argument("--model", required=True, help="the model that was deployed")
    add_model_options(q)
    when = q.add_mutually_exclusive_group()
    when.add_argument("--time", type=float, help="the readout nearest this time since "
                      "programming, s (default: the last)")
    when.add_argument("--readout", type=int, help="readout index (0 = first, -1 = last)")
    q.add_argument("-o", "--output", type=output_file, required=True, help="CSV file")
    q.add_argument("--force", action="store_true", help="replace OUTPUT")
    q.set_defaults(func=cmd_fusion_export)

    q = bridge.add_parser("fusion-evaluate", help="a network's accuracy with conductances "
                          "from a Fusion CSV")
    q.add_argument("csv", type=Path)
    q.add_argument("--model", required=True)
    add_model_options(q)
    q.add_argument("--bits", type=int, help="DAC and ADC bits (default: the deployment's, "
                   "from the record fusion-export writes beside the CSV)")
    q.set_defaults(func=cmd_fusion_evaluate)
