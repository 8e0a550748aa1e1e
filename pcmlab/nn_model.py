"""Torch classifiers the evaluator supports: a safe model file, layer checks, BN folding.

A model is an ``nn.Sequential`` of the supported layers. The model file is a torch archive
of tensors and plain containers only (an architecture list and a state dict), loaded with
``weights_only=True``: no pickled code is ever executed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcmlab.errors import ConfigError, SchemaError

MODEL_FORMAT = "pcmlab-model/1"
ANALOG = (nn.Linear, nn.Conv2d)
_PASSIVE = {
    "ReLU": (), "Tanh": (), "Sigmoid": (), "Identity": (),
    "Flatten": ("start_dim", "end_dim"),
    "MaxPool2d": ("kernel_size", "stride", "padding"),
    "AvgPool2d": ("kernel_size", "stride", "padding"),
    "Dropout": ("p",),
}
_WITH_STATE = {
    "Linear": ("in_features", "out_features"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"),
    "BatchNorm1d": ("num_features", "eps"),
    "BatchNorm2d": ("num_features", "eps"),
}
SUPPORTED = tuple(sorted({*_PASSIVE, *_WITH_STATE}))


def _unsupported(i: int, module: nn.Module) -> ConfigError:
    return ConfigError(f"layer {i} ({type(module).__name__}) is not supported; supported "
                       f"layers: {', '.join(SUPPORTED)}")


def check_model(model: nn.Module) -> nn.Sequential:
    """The model as a Sequential of supported layers, or a ConfigError naming the first
    layer that is not."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError(f"the model must be a torch.nn.Sequential of supported layers, "
                          f"got {type(model).__name__}")
    for i, m in enumerate(model):
        name = type(m).__name__
        if name not in _PASSIVE and name not in _WITH_STATE:
            raise _unsupported(i, m)
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            raise ConfigError(f"layer {i} (Conv2d): groups={m.groups}, padding_mode="
                              f"'{m.padding_mode}' are not supported (groups=1, 'zeros')")
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and not m.track_running_stats:
            raise ConfigError(f"layer {i} ({name}) has no running statistics to fold")
    return model


def layer_spec(m: nn.Module) -> dict[str, Any]:
    name = type(m).__name__
    keys = _PASSIVE.get(name) or _WITH_STATE.get(name, ())
    spec: dict[str, Any] = {"type": name}
    for k in keys:
        v = getattr(m, k)
        spec[k] = list(v) if isinstance(v, tuple) else v
    if isinstance(m, ANALOG):
        spec["bias"] = m.bias is not None
    return spec


def build_layer(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("type")
    if kind not in _PASSIVE and kind not in _WITH_STATE:
        raise SchemaError(f"model file: layer type {kind!r} is not supported "
                          f"({', '.join(SUPPORTED)})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()
              if k != "type"}
    return getattr(nn, kind)(**kwargs)


@dataclass
class ModelFile:
    model: nn.Sequential
    input_shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def save_model_file(model: nn.Sequential, path: str | Path, *, input_shape: tuple[int, ...],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a safely loadable model file (architecture + state dict + plain extras)."""
    check_model(model)
    path = Path(path)
    torch.save({"format": MODEL_FORMAT, "layers": [layer_spec(m) for m in model],
                "state_dict": model.state_dict(), "input_shape": list(input_shape),
                "extra": extra or {}}, path)
    return path


def load_model_file(path: str | Path) -> ModelFile:
    """Load a model file written by ``save_model_file``; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such model file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for foreign or unsafe files
        raise SchemaError(f"{path}: not a pcmlab model file, or one that would need to run "
                          f"pickled code to load ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise SchemaError(f"{path}: not a pcmlab model file (format {MODEL_FORMAT} expected)")
    model = nn.Sequential(*[build_layer(s) for s in data["layers"]])
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise SchemaError(f"{path}: weights do not match the architecture ({exc})") from None
    model.eval()
    return ModelFile(model, tuple(data["input_shape"]), dict(data.get("extra", {})))


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """An equivalent eval-mode Sequential with every BatchNorm folded into the Linear or
    Conv2d before it (new weights and bias) and Dropout dropped."""
    check_model(model)
    src = copy.deepcopy(model).eval()
    out: list[nn.Module] = []
    for i, m in enumerate(src):
        if isinstance(m, nn.Dropout):
            continue
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            prev = out[-1] if out else None
            if not isinstance(prev, ANALOG):
                raise ConfigError(f"layer {i} ({type(m).__name__}) does not follow a Linear "
                                  "or Conv2d, so it cannot be folded")
            _fold_into(prev, m)
            continue
        out.append(m)
    return nn.Sequential(*out).eval()


@torch.no_grad()
def _fold_into(layer: nn.Linear | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(scale.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = bias * scale + shift
    layer.bias = nn.Parameter(new_bias)


def analog_layers(model: nn.Sequential) -> list[tuple[int, nn.Linear | nn.Conv2d]]:
    """(position, layer) of every layer that goes on the crossbar."""
    return [(i, m) for i, m in enumerate(model) if isinstance(m, ANALOG)]
