"""aihwkit networks onto a chip: read what an aihwkit model learned, without aihwkit.

An aihwkit model's ``state_dict()`` holds, per analog layer, its tile weights, its
digital output scales, its learned input range, its bias and its ``rpu_config`` (a
pickled aihwkit object). pcmlab reads such a checkpoint with torch's weights-only loader:
every aihwkit class in it is replaced by an inert record of its fields, and anything
that is neither a tensor nor an aihwkit class is refused, so no pickled code runs and
aihwkit need not be installed. A live model's ``state_dict()`` is read the same way.

What is taken (``AihwkitImport.mapped``): the effective weights (tile weights times
aihwkit's mapping scales and learned output scales, as its ``get_weights`` gives them), the biases,
the DAC resolution (``forward.inp_res``) and ADC resolution (``forward.out_res``) as bits,
and the learned input ranges as the DAC ranges. What is not (``not_mapped``, said by
``pcmlab deploy``): aihwkit's output bound (the ADC ranges are calibrated on the data
instead), its noise and bound management, output noise, IR drop and weight modifiers
(training-time noise), and its drift compensation (pcmlab's own runs on the chip).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcmlab.analog.periphery import LayerRanges, Periphery
from pcmlab.errors import ConfigError, SchemaError

_TILE_STATE = ".analog_module.analog_tile_state"


class AihwkitRecord:
    """An aihwkit object as read from a checkpoint: its fields, never its code."""

    aihwkit_name = "aihwkit"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args  # an enum's value, for instance
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)

    @property
    def value(self) -> Any:
        return self.args[0] if self.args else None

    @property
    def name(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"<{self.aihwkit_name} {self.args or ''}>"


def _record_class(qualified: str) -> type:
    return type(qualified.rpartition(".")[2], (AihwkitRecord,), {"aihwkit_name": qualified})


def is_aihwkit_checkpoint(path: str | Path) -> bool:
    """Does the file hold an aihwkit model's state dict (pickled aihwkit objects)?"""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a torch file at all
        return False
    return any(n.startswith("aihwkit.") for n in names)


def load_aihwkit_checkpoint(path: str | Path) -> dict[str, Any]:
    """An aihwkit state dict, with aihwkit's objects as inert records."""
    path = Path(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # not a torch file, or pickle opcodes torch does not scan
        raise SchemaError(f"{path}: not a readable aihwkit checkpoint "
                          f"({type(exc).__name__}: {exc})") from None
    foreign = sorted(n for n in names if not n.startswith("aihwkit."))
    if foreign:
        raise SchemaError(f"{path}: an aihwkit checkpoint may hold tensors and aihwkit's own "
                          f"objects only; it also holds {', '.join(foreign[:5])}, which would "
                          "run pickled code: refused")
    records = [(_record_class(n), n) for n in sorted(names)]
    try:
        with torch.serialization.safe_globals(records):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SchemaError(f"{path}: not a readable aihwkit checkpoint "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(data, Mapping):
        raise SchemaError(f"{path}: an aihwkit checkpoint is a state dict, got "
                          f"{type(data).__name__}")
    return dict(data)


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if obj is None:
            return default
        obj = obj.get(n) if isinstance(obj, Mapping) else getattr(obj, n, None)
    return default if obj is None else obj


def _bits(resolution: Any, what: str) -> tuple[int | None, str]:
    """aihwkit's resolution (1/steps over the full range; <= 0: none) as pcmlab bits."""
    r = float(resolution) if resolution is not None else 0.0
    if r <= 0:
        return None, f"{what}: none in aihwkit (not quantized)"
    steps = 1.0 / r if r < 1 else r
    bits = math.log2(steps + 2)
    whole = math.ceil(bits - 1e-6)
    note = f"{what}: aihwkit resolution {r:.6g} ({steps:.0f} steps) -> {whole} bits"
    if abs(bits - whole) > 1e-6:
        note += f" (aihwkit's grid is {bits:.2f} bits; the next whole width kept)"
    return whole, note


@dataclass
class AihwkitImport:
    """An aihwkit model as pcmlab deploys it."""

    model: nn.Module  # the user's digital model with aihwkit's effective weights
    periphery: Periphery
    input_ranges: dict[str, float]  # layer name -> learned input range (symmetric)
    mapped: list[str] = field(default_factory=list)
    not_mapped: list[str] = field(default_factory=list)

    def extra(self) -> dict[str, Any]:
        """What a pcmlab weights file carries for the deploy (``pcmlab-weights/1``)."""
        return {"periphery": self.periphery.model_dump(), "aihwkit": {
            "input_ranges": self.input_ranges, "mapped": self.mapped,
            "not_mapped": self.not_mapped}}


_ARRAY = ".analog_module.array."
_TILE_KEY = re.compile(r"^(?P<name>.*?)\.analog_module\.(?:array\.(?P<i>\d+)\.(?P<j>\d+)\.)?"
                       r"analog_tile_state$")


def _tensors(state: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and isinstance(v, torch.Tensor)}


def _layer_states(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each analog layer's tiles: ``{"tiles": {(i, j): {"tile": state, tensors}}, tensors}``.
    aihwkit's TileModuleArray splits a layer larger than its mapping's max input/output size
    into ``array.i.j`` tiles, i over input blocks and j over output blocks."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        m = _TILE_KEY.match(key)
        if m is None:
            continue
        name = m["name"]
        layer = out.setdefault(name, {"tiles": {}})
        ij = (int(m["i"]), int(m["j"])) if m["i"] is not None else (0, 0)
        tile_prefix = key[: -len("analog_tile_state")]
        layer["tiles"][ij] = {"tile": value, **_tensors(state, tile_prefix)}
    for name, layer in out.items():
        # the layer's own tensors (bias; input_range etc. for a single tile)
        prefix = name + ".analog_module."
        layer.update({k: v for k, v in _tensors(state, prefix).items()
                      if not k.startswith("array.")})
    analog = {k.split(".analog_module.")[0] for k in state if ".analog_module." in k}
    missing = sorted(analog - set(out))
    if missing:
        raise SchemaError(f"aihwkit analog layer(s) {', '.join(missing)}: no tile weights "
                          "(no '...analog_tile_state' key) in the state dict; a layout this "
                          "pcmlab does not read, so they cannot deploy with their weights")
    return out


def _tile_weights(name: str, tile: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """One tile's effective weights: aihwkit's get_scales() (mapping scales, from
    weight_scaling_omega, times the learned output scales, each a scalar or one per output)
    times its weights."""
    w = _get(tile["tile"], "analog_tile_weights")
    if not isinstance(w, torch.Tensor):
        raise SchemaError(f"aihwkit layer {name}: no tile weights in its state")
    w_eff = w.detach().double()
    scales = []
    for key in ("mapping_scales", "out_scaling_alpha"):
        v = tile.get(key)
        if v is None:
            v = _get(tile["tile"], key)
        if isinstance(v, torch.Tensor) and v.numel() > 0:
            a = v.detach().double().reshape(-1)
            if a.numel() not in (1, w_eff.shape[0]):
                raise SchemaError(f"aihwkit layer {name}: {key} has {a.numel()} values "
                                  f"for {w_eff.shape[0]} outputs")
            w_eff = w_eff * (a.reshape(-1, 1) if a.numel() > 1 else a.reshape(()))
            scales.append(key)
    return w_eff, scales


def _assemble(name: str, tiles: dict[tuple[int, int], dict[str, Any]]
              ) -> tuple[torch.Tensor, list[str]]:
    """The layer's weights from its tiles: tile (i, j) holds outputs block j x inputs
    block i (TileModuleArray.get_weights concatenates likewise)."""
    n_in = 1 + max(i for i, _ in tiles)
    n_out = 1 + max(j for _, j in tiles)
    if set(tiles) != {(i, j) for i in range(n_in) for j in range(n_out)}:
        raise SchemaError(f"aihwkit layer {name}: tiles {sorted(tiles)} do not fill a "
                          f"{n_in} x {n_out} array")
    blocks = {ij: _tile_weights(name, t) for ij, t in tiles.items()}
    scales = blocks[(0, 0)][1]
    rows = [torch.cat([blocks[(i, j)][0] for i in range(n_in)], dim=1) for j in range(n_out)]
    try:
        return torch.cat(rows, dim=0), scales
    except RuntimeError as e:
        raise SchemaError(f"aihwkit layer {name}: its tiles do not assemble ({e})") from None


def from_aihwkit(model: nn.Module, state: Mapping[str, Any] | str | Path) -> AihwkitImport:
    """The digital ``model`` (the network before aihwkit's ``convert_to_analog``, made by
    the same code) with the weights and periphery an aihwkit ``state`` learned: a state
    dict or a checkpoint file of the converted model."""
    if isinstance(state, str | Path):
        state = load_aihwkit_checkpoint(state)
    layers = _layer_states(state)
    if not layers:
        raise SchemaError("no aihwkit analog layer in the state dict (keys ending in "
                          f"'{_TILE_STATE}'): is it the state_dict() of a converted model?")
    modules = dict(model.named_modules())
    mapped: list[str] = []
    not_mapped: list[str] = []
    ranges: dict[str, float] = {}
    config = None
    for name, layer in layers.items():
        target = modules.get(name)
        if not isinstance(target, nn.Linear | nn.Conv1d | nn.Conv2d):
            raise ConfigError(f"aihwkit layer {name!r} has no Linear/Conv1d/Conv2d of that "
                              f"name in the model ({type(target).__name__ if target else 'none'}); "
                              "give the factory that made the model aihwkit converted")
        tiles = layer["tiles"]
        w_eff, scales = _assemble(name, tiles)
        w = w_eff
        if w_eff.shape[0] != target.weight.shape[0] or w_eff.numel() != target.weight.numel():
            raise ConfigError(f"aihwkit layer {name}: tile weights {tuple(w.shape)} do not fit "
                              f"the model's {type(target).__name__} {tuple(target.weight.shape)}")
        with torch.no_grad():
            target.weight.copy_(w_eff.reshape(target.weight.shape).to(target.weight.dtype))
            bias = layer.get("bias")
            if target.bias is not None and isinstance(bias, torch.Tensor):
                target.bias.copy_(bias.reshape(target.bias.shape))
            elif (target.bias is None) != (bias is None):
                raise ConfigError(f"aihwkit layer {name}: bias in aihwkit "
                                  f"{bias is not None}, in the model {target.bias is not None}")
        mapped.append(f"{name}: weights {tuple(target.weight.shape)} (tile weights"
                      + "".join(f" x {k}" for k in scales)
                      + (f", {len(tiles)} tiles assembled" if len(tiles) > 1 else "") + ")")
        tile_ranges = [r for t in tiles.values() for r in [t.get("input_range", layer.get(
            "input_range"))] if isinstance(r, torch.Tensor) and r.numel() == 1 and float(r) > 0]
        if len(tile_ranges) == len(tiles):
            ranges[name] = max(float(r) for r in tile_ranges)
            if len({float(r) for r in tile_ranges}) > 1:
                mapped.append(f"{name}: its {len(tiles)} tiles learned input ranges "
                              f"{sorted(float(r) for r in tile_ranges)}; pcmlab has one DAC "
                              "range per layer, the largest kept")
        for t in tiles.values():
            layer_config = _get(t["tile"], "rpu_config")
            res = tuple(_get(layer_config, "forward", k) for k in ("inp_res", "out_res"))
            if config is None:
                config, config_of, config_res = layer_config, name, res
            elif res != config_res:
                raise ConfigError(
                    f"aihwkit layer {name} has DAC/ADC resolution (inp_res, out_res) {res}, "
                    f"layer {config_of} {config_res}: pcmlab deploys one DAC/ADC width for "
                    "the whole network; give every layer the same resolutions")
    dac_bits, dac_note = _bits(_get(config, "forward", "inp_res"), "DAC")
    adc_bits, adc_note = _bits(_get(config, "forward", "out_res"), "ADC")
    mapped += [dac_note, adc_note]
    if ranges:
        mapped.append(f"DAC ranges: aihwkit's learned input ranges of {len(ranges)} of "
                      f"{len(layers)} layers")
    missing = [n for n in layers if n not in ranges]
    if missing:
        not_mapped.append(f"input ranges of {', '.join(missing)}: not learned in aihwkit "
                          "(calibrated on the data instead)")
    not_mapped.append("ADC ranges: aihwkit's out_bound is relative to its own normalization;"
                      " calibrated on the data instead")
    nm = _get(config, "forward", "noise_management")
    bm = _get(config, "forward", "bound_management")
    for what, v in (("noise management", nm), ("bound management", bm)):
        if v is not None and str(getattr(v, "value", v)).upper() not in ("NONE", "0"):
            not_mapped.append(f"{what} ({getattr(v, 'value', v)}): pcmlab's DAC has fixed "
                              "ranges, no per-vector scaling")
    for what, v in (("output noise", _get(config, "forward", "out_noise")),
                    ("weight noise", _get(config, "forward", "w_noise")),
                    ("IR drop", _get(config, "forward", "ir_drop"))):
        if v:
            not_mapped.append(f"{what} {v}: the chip's own, not simulated")
    mod = _get(config, "modifier", "type")
    if mod is not None and str(getattr(mod, "value", mod)).upper() not in ("NONE", "0"):
        not_mapped.append(f"weight modifier ({getattr(mod, 'value', mod)}): training-time "
                          "noise, not part of a deployment")
    not_mapped.append("drift compensation: pcmlab's global drift compensation (per layer, "
                      "from a read at t0) is used")
    periphery = Periphery(dac_bits=dac_bits, adc_bits=adc_bits)
    return AihwkitImport(model.eval(), periphery, ranges, mapped, not_mapped)


def with_input_ranges(calibrated: LayerRanges, input_ranges: dict[str, float]
                      ) -> LayerRanges:
    """``calibrated`` ranges with aihwkit's learned input ranges as the DAC ranges
    (symmetric, as aihwkit's are) where the layer has one."""
    names = calibrated.names or ()
    lo, hi = list(calibrated.input_lo), list(calibrated.input_hi)
    for k, name in enumerate(names):
        if name in input_ranges:
            lo[k], hi[k] = -input_ranges[name], input_ranges[name]
    return LayerRanges(tuple(lo), tuple(hi), calibrated.output, calibrated.names)
