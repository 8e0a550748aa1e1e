"""Model files, loaded safely: no pickled code is ever executed.

Two ways to bring a network:

- a ``pcmlab-model/1`` file: an ``nn.Sequential`` of the layers below, stored as an
  architecture list and a state dict (plain containers and tensors);
- any ``nn.Module`` from code the user provides: ``pkg.module:factory`` (a callable that
  returns the module, imported by name) plus a weights file: a plain state dict
  (``torch.save(model.state_dict(), path)``), a ``pcmlab-weights/1`` file written by
  ``save_weights_file`` (state dict, input shape, extras such as trained ranges), or the
  state dict of the same network converted and trained in aihwkit
  (``pcmlab.bridge.aihwkit_checkpoint``: its aihwkit objects are read as inert records).

Every file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcmlab.errors import ConfigError, SchemaError

MODEL_FORMAT = "pcmlab-model/1"
WEIGHTS_FORMAT = "pcmlab-weights/1"
ANALOG = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PASSIVE = {
    "ReLU": (), "Tanh": (), "Sigmoid": (), "Identity": (), "GELU": (),
    "Flatten": ("start_dim", "end_dim"),
    "MaxPool1d": ("kernel_size", "stride", "padding"),
    "MaxPool2d": ("kernel_size", "stride", "padding"),
    "AvgPool1d": ("kernel_size", "stride", "padding"),
    "AvgPool2d": ("kernel_size", "stride", "padding"),
    "AdaptiveAvgPool1d": ("output_size",),
    "AdaptiveAvgPool2d": ("output_size",),
    "Dropout": ("p",),
}
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
         "groups")
_WITH_STATE = {
    "Linear": ("in_features", "out_features"),
    "Conv1d": _CONV,
    "Conv2d": _CONV,
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
        raise ConfigError(f"a pcmlab-model/1 file holds a torch.nn.Sequential of supported "
                          f"layers, got {type(model).__name__}; save any other module with "
                          "save_weights_file and load it with its factory "
                          "(--model pkg.module:factory --weights FILE)")
    for i, m in enumerate(model):
        name = type(m).__name__
        if name not in _PASSIVE and name not in _WITH_STATE:
            raise _unsupported(i, m)
        if isinstance(m, nn.Conv1d | nn.Conv2d) and m.padding_mode != "zeros":
            raise ConfigError(f"layer {i} ({name}): padding_mode='{m.padding_mode}' cannot be "
                              "stored in a pcmlab-model/1 file; use a factory and a weights "
                              "file (save_weights_file)")
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
    model: nn.Module
    input_shape: tuple[int, ...] | None
    extra: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None  # "pkg.module:factory" for a model from code


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


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for foreign or unsafe files
        raise SchemaError(f"{path}: not a {what}, or one that would need to run pickled "
                          f"code to load ({type(exc).__name__})") from None


def is_factory_spec(text: str) -> bool:
    """Does ``text`` name a factory (``pkg.module:callable``) rather than a file?"""
    module, sep, attr = str(text).partition(":")
    return bool(sep) and bool(attr) and not Path(text).exists() and all(
        part.isidentifier() for part in [*module.split("."), *attr.split(".")])


def import_factory(spec: str) -> nn.Module:
    """Call ``pkg.module:factory`` (imported by name, the current folder first on the path,
    as ``python -m`` has it) and return the module it makes."""
    if not is_factory_spec(spec):
        raise ConfigError(f"{spec!r}: expected pkg.module:factory (a callable that returns "
                          "an nn.Module)")
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{spec}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{spec}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def save_weights_file(model: nn.Module, path: str | Path, *, factory: str,
                      input_shape: tuple[int, ...] | None = None, folded: bool = False,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write a weights file for a model made by ``factory``: its state dict, the input
    shape and plain extras. ``folded``: the state dict is of the model with its BatchNorms
    folded (what hardware-aware training returns)."""
    path = Path(path)
    torch.save({"format": WEIGHTS_FORMAT, "factory": factory, "state_dict": model.state_dict(),
                "input_shape": None if input_shape is None else list(input_shape),
                "folded": folded, "extra": extra or {}}, path)
    return path


def _is_export_archive(path: Path) -> bool:
    """A torch.export .pt2 archive (a zip with the exported program's layout)?"""
    import zipfile

    if path.suffix == ".pt2":
        return True
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith(("archive_format", "serialized_exported_program.json"))
                   or "/models/" in n for n in z.namelist())


def load_model(spec: str | Path, weights: str | Path | None = None) -> ModelFile:
    """A model from a pcmlab-model/1 file, or from ``pkg.module:factory`` with a weights
    file (a plain state dict or pcmlab-weights/1). Never unpickles code."""
    text = str(spec)
    if not is_factory_spec(text) and _is_export_archive(Path(text)):
        raise ConfigError(
            f"{text} is a torch.export program; pcmlab does not load those: torch's loader "
            "may unpickle code stored in the archive. Give the model's code and weights "
            "instead: --model pkg.module:factory --weights STATE_DICT.pt")
    if not is_factory_spec(text):
        if weights is not None:
            raise ConfigError(f"--weights goes with a factory (pkg.module:factory), not with "
                              f"the model file {text}")
        return load_model_file(text)
    model = import_factory(text)
    if weights is None:
        raise ConfigError(f"{text} needs its weights: --weights FILE (a state dict saved "
                          "with torch.save(model.state_dict(), FILE))")
    wpath = Path(weights)
    from pcmlab.bridge.aihwkit_checkpoint import from_aihwkit, is_aihwkit_checkpoint

    if wpath.is_file() and is_aihwkit_checkpoint(wpath):
        # an aihwkit model's state dict: read without running its pickled objects
        imported = from_aihwkit(model, wpath)
        return ModelFile(imported.model, None, imported.extra(), text)
    data = _torch_load(wpath, "weights file")
    extra: dict[str, Any] = {}
    input_shape = None
    if isinstance(data, dict) and data.get("format") == WEIGHTS_FORMAT:
        if data.get("factory") not in (None, text):
            raise ConfigError(f"{wpath} holds weights of {data['factory']}, not of {text}")
        state = data["state_dict"]
        extra = dict(data.get("extra") or {})
        input_shape = tuple(data["input_shape"]) if data.get("input_shape") else None
        if data.get("folded"):
            from pcmlab.analog import fold_batchnorm

            example = None if input_shape is None else torch.zeros(2, *input_shape)
            model, _ = fold_batchnorm(model, example)
    elif isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        state = data
    else:
        raise SchemaError(f"{wpath}: not a state dict (a dict of tensors) or a "
                          f"{WEIGHTS_FORMAT} file")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise SchemaError(f"{wpath}: weights do not match {text} "
                          f"({' '.join(first[:3])})") from None
    return ModelFile(model.eval(), input_shape, extra, text)
