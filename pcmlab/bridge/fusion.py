"""Measured conductances in the layout of aihwkit's Fusion flow, and back.

aihwkit's ``fusion_import`` (``aihwkit.utils.export``) reads a CSV: five header lines with
one column per analog layer (the layer's ordinal among the model's modules, its aihwkit
class, its number of weights, its height = outputs and its width = inputs), a line of layer
names, then one line per layer with one conductance in µS per weight, in the layer's
weight order (outputs x inputs, row-major: ``weight.reshape(out, -1)``). The Fusion chip
has one device per weight; ``fusion_import`` multiplies each value by the sign of the
original weight and fits one scale per output to the original weights.

pcmlab programs a differential pair per weight, so the value written is the pair's
measured differential conductance G+ - G- projected on the weight's sign,
``(G+ - G-) * sign(W)``: the magnitude the weight has on the chip. Where a small weight
reads back with the other sign it is negative, never clipped, so ``fusion_import``
recovers G+ - G- exactly.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pcmlab.errors import ConfigError, SchemaError

log = logging.getLogger(__name__)

_AIHWKIT_CLASS = {"Linear": "AnalogLinear", "Conv1d": "AnalogConv1d", "Conv2d": "AnalogConv2d"}


@dataclass(frozen=True)
class FusionLayer:
    name: str
    ordinal: int  # the layer's number in aihwkit's header
    kind: str  # aihwkit's class name
    height: int  # outputs
    width: int  # inputs per output
    conductance_us: npt.NDArray[np.float64]  # (height, width)


def fusion_ordinals(model: nn.Module) -> dict[str, int]:
    """The number aihwkit's Fusion header gives each module of ``model`` once converted:
    modules counted in ``named_modules`` order, Sequential containers (aihwkit's
    AnalogSequential) and ModuleLists not counted, as aihwkit's header does."""
    out, idx = {}, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential | nn.ModuleList):  # containers aihwkit skips
            continue
        if name == "":  # a custom root: aihwkit wraps it (AnalogWrapper), uncounted
            continue
        idx += 1
        out[name] = idx
    return out


def fusion_layers(model: nn.Module, weights: dict[str, torch.Tensor],
                  differential_us: dict[str, torch.Tensor]) -> list[FusionLayer]:
    """Fusion rows for each weight layer: ``weights`` the deployed weights, and
    ``differential_us`` each layer's measured G+ - G- in the weight's shape."""
    ordinals = fusion_ordinals(model)
    modules = dict(model.named_modules())
    out = []
    for name, w in weights.items():
        module = modules.get(name)
        kind = _AIHWKIT_CLASS.get(type(module).__name__)
        if kind is None:
            raise ConfigError(f"layer {name} ({type(module).__name__}): the Fusion layout "
                              f"holds {', '.join(_AIHWKIT_CLASS)} layers only; keep it "
                              "digital (--keep-digital) to export the rest")
        g = (differential_us[name].double() * torch.sign(w.double())).reshape(w.shape[0], -1)
        out.append(FusionLayer(name, ordinals[name], kind, int(g.shape[0]), int(g.shape[1]),
                               g.cpu().numpy()))
    return out


def write_fusion_csv(layers: list[FusionLayer], path: str | Path) -> Path:
    """The CSV that aihwkit's ``fusion_import`` reads (values in µS)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=",", lineterminator="\n")
        w.writerow([x.ordinal for x in layers])
        w.writerow([x.kind for x in layers])
        w.writerow([x.height * x.width for x in layers])
        w.writerow([x.height for x in layers])
        w.writerow([x.width for x in layers])
        w.writerow([x.name for x in layers])
        for x in layers:
            w.writerow([repr(float(v)) for v in x.conductance_us.ravel()])
    log.info("wrote %d layers in the Fusion layout to %s", len(layers), path)
    return path


def read_fusion_csv(path: str | Path) -> list[FusionLayer]:
    """A Fusion-layout CSV (pcmlab's export, or conductances from IBM's Fusion flow)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such Fusion CSV")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=","))
    if len(rows) < 6:
        raise SchemaError(f"{path}: a Fusion CSV has 5 header lines and a line of layer "
                          f"names; it has {len(rows)} lines")
    n = len(rows[5])
    if any(len(r) != n for r in rows[:6]) or len(rows) != 6 + n:
        raise SchemaError(f"{path}: {n} layer names need {n} columns in each header line "
                          f"and {n} lines of values after them")
    out = []
    for k, name in enumerate(rows[5]):
        try:
            ordinal, height, width = int(rows[0][k]), int(rows[3][k]), int(rows[4][k])
            count = int(rows[2][k])
            values = np.array([float(v) for v in rows[6 + k]], dtype=np.float64)
        except ValueError as exc:
            raise SchemaError(f"{path}: layer {name}: {exc}") from None
        if values.size != count or count != height * width:
            raise SchemaError(f"{path}: layer {name} has {values.size} values; its header says "
                              f"{count} = {height} x {width}")
        out.append(FusionLayer(name, ordinal, rows[1][k], height, width,
                               values.reshape(height, width)))
    return out


def weights_from_fusion(layers: list[FusionLayer], weights: dict[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """Weights from Fusion conductances as aihwkit's ``fusion_import`` forms them: the
    value times the sign of the original weight, one least-squares scale per output onto
    the original weights."""
    out = {}
    for x in layers:
        if x.name not in weights:
            raise ConfigError(f"Fusion layer {x.name} is not a weight layer of the model "
                              f"({', '.join(weights)})")
        w0 = weights[x.name].double().reshape(x.height, -1)
        if w0.shape[1] != x.width:
            raise ConfigError(f"Fusion layer {x.name}: {x.height} x {x.width} values, the "
                              f"model's weight is {tuple(weights[x.name].shape)}")
        g = torch.from_numpy(x.conductance_us) * torch.sign(w0)
        # y = a g + b per output, as sklearn's LinearRegression in fusion_import (with b)
        gm, wm = g.mean(dim=1, keepdim=True), w0.mean(dim=1, keepdim=True)
        var = ((g - gm) ** 2).sum(dim=1, keepdim=True)
        a = torch.where(var > 0, ((g - gm) * (w0 - wm)).sum(dim=1, keepdim=True)
                        / var.clamp(min=1e-300), torch.zeros_like(var))
        out[x.name] = (g * a).reshape(weights[x.name].shape).to(weights[x.name].dtype)
    return out


def fusion_from_conductances(model: nn.Module, evaluator: object, mapping: object,
                             g_us: torch.Tensor) -> list[FusionLayer]:
    """Fusion rows of one readout: ``g_us`` every device's conductance in the mapping's
    targets order (a deployment's readout row), ``evaluator`` the deployed network's
    ``AnalogEvaluator``, ``model`` the user's module (for aihwkit's layer numbers)."""
    layers = mapping.layers  # type: ignore[attr-defined]
    measured = evaluator._torch_weights(mapping, g_us)  # type: ignore[attr-defined]
    g_max = float(mapping.g_max_us)  # type: ignore[attr-defined]
    weights, differential = {}, {}
    for lm, w_meas in zip(layers, measured, strict=True):
        if lm.w_max <= 0:
            raise ConfigError(f"layer {lm.name}: all its weights are zero; nothing to export")
        weights[lm.name] = evaluator.weights[lm.index].cpu()  # type: ignore[attr-defined]
        differential[lm.name] = w_meas.cpu() * (g_max / lm.w_max)  # G+ - G-, µS
    return fusion_layers(model, weights, differential)


def fusion_import_torch(csv_path: str | Path, analog_model: nn.Module,
                        params: dict | None = None) -> nn.Module:
    """aihwkit's ``fusion_import`` for models on aihwkit's torch tile (aihwkit 1.1's own
    accepts its C++ ``InferenceTile`` only, which does not load beside every torch
    build): the same steps with aihwkit's own header check, CSV reader and
    ``FusionConductanceConverter``. ``params``: per layer, per tile,
    ``{"original_weights": ...}`` as ``fusion_export`` returns them (default: the
    model's current tile weights, i.e. the weights it was exported with)."""
    try:
        from aihwkit.inference.converter.fusion import FusionConductanceConverter
        from aihwkit.utils.export import _fusion_get_csv_header, _fusion_load_csv
    except ImportError as exc:
        raise ConfigError(f"aihwkit is not installed ({exc})") from None
    data = _fusion_load_csv(str(csv_path), _fusion_get_csv_header(analog_model))
    converter = FusionConductanceConverter()
    analog_model.eval()
    for name, module in analog_model.named_analog_layers():  # type: ignore[operator]
        values, start = data[name], 0
        for k, tile in enumerate(module.analog_tiles()):
            w0 = (params[name][k]["original_weights"] if params is not None else
                  tile.get_weights(apply_weight_scaling=False)[0])
            n = tile.out_size * tile.in_size
            g = torch.tensor(values[start:start + n]).reshape(tile.out_size, tile.in_size)
            start += n
            tile.set_weights(converter.convert_back_to_weights(
                [g], {"original_weights": w0}), tile.get_weights()[1],
                apply_weight_scaling=False, realistic=False)
    return analog_model
