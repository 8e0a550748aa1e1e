"""Any ``torch.nn.Module`` to an analog network: BatchNorm folded where the graph allows,
weight layers swapped for their analog twins in a copy, everything else left as it is.

The model's own ``forward`` is never rewritten (the aihwkit / torch.ao.quantization
pattern): residual adds, attention arithmetic, norms, pooling and custom code run as the
model says, and only the modules that hold a crossbar matrix are replaced.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import inspect
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from pcmlab.analog.attention import AnalogMultiheadAttention, unsupported_attention
from pcmlab.analog.layers import AnalogConv, AnalogLinear, AnalogMatrix, AnalogState
from pcmlab.analog.periphery import Periphery
from pcmlab.analog.recurrent import AnalogGRU, AnalogLSTM
from pcmlab.errors import ConfigError

log = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_FOLDS_INTO = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class LayerReport:
    """Where one module of the model went: ``placement`` is "chip", "digital" or
    "folded", ``reason`` says why."""

    name: str
    kind: str
    placement: str
    reason: str
    weights: int = 0


# -- BatchNorm folding -------------------------------------------------------------------
def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None
                   ) -> tuple[nn.Module, list[LayerReport]]:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a Linear
    or convolution (its only user, called once) folded into it (torch's fusion helpers)
    and replaced by Identity. The graph comes from torch.fx; a model that cannot be traced
    keeps its BatchNorms digital. A Linear is folded only where its output is (N, C),
    which needs ``example`` inputs to see."""
    model = copy.deepcopy(model).eval()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BN)}
    if not bns:
        return model, []
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds on dynamic control flow
        return model, [LayerReport(n, type(m).__name__, "digital",
                                   f"the model cannot be traced by torch.fx "
                                   f"({type(exc).__name__}), so its graph is unknown")
                       for n, m in bns.items()]
    shapes = _output_ndims(model, example)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(model.named_modules())
    report, folded = [], set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in bns:
            continue
        bn, name = bns[node.target], node.target
        src = node.args[0] if node.args else None
        reason = None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), _FOLDS_INTO)):
            reason = "it does not directly follow a Linear or convolution"
        elif len(src.users) != 1 or calls.get(src.target, 0) != 1:
            reason = f"the output of {src.target} is used elsewhere too"
        elif not bn.track_running_stats or bn.running_mean is None:
            reason = "it has no running statistics"
        elif calls.get(name, 0) != 1:
            reason = "it is called more than once"
        elif isinstance(modules[src.target], nn.Linear) and shapes.get(src.target) != 2:
            reason = (f"the output of {src.target} is not (N, C)" if src.target in shapes
                      else "folding after a Linear needs example inputs to check shapes")
        if reason is not None:
            report.append(LayerReport(name, type(bn).__name__, "digital", reason))
            continue
        layer = modules[src.target]
        fused = (fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear)
                 else fuse_conv_bn_eval(layer, bn))
        _set_module(model, src.target, fused)
        _set_module(model, name, nn.Identity())
        folded.add(name)
        report.append(LayerReport(name, type(bn).__name__, "folded",
                                  f"folded into {src.target}"))
    return model.eval(), report


def unfold_batchnorm(model: nn.Module, folded: nn.Module, pairs: dict[str, str],
                     example: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` (the architecture the user's code builds) carrying the weights
    of ``folded``, its ``fold_batchnorm`` form (as hardware-aware training leaves it), so
    that ``model.load_state_dict`` takes its state dict. ``pairs``: folded BatchNorm name
    -> the layer it was folded into. Each such BatchNorm becomes the identity in eval mode
    (running mean 0, running variance 1 - eps, weight 1; it carries the folded bias when
    its layer has no bias of its own): its scale is in the layer's weight. ``example``:
    inputs on which the copy is checked to compute what ``folded`` computes."""
    out = copy.deepcopy(model).eval()
    state = folded.state_dict()
    mine = out.state_dict()
    with torch.no_grad():
        for key, t in mine.items():
            if key in state and state[key].shape == t.shape:
                t.copy_(state[key])
        for bn_name, layer_name in pairs.items():
            bn, layer = out.get_submodule(bn_name), out.get_submodule(layer_name)
            fused = folded.get_submodule(layer_name)
            if not isinstance(bn, _BN) or not isinstance(layer, _FOLDS_INTO):
                raise ConfigError(f"{bn_name} folded into {layer_name}: not a BatchNorm "
                                  "after a Linear or convolution in this model")
            layer.weight.copy_(fused.weight)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0).sub_(bn.eps)  # var + eps = 1: the scale is in weight
            if layer.bias is not None:
                layer.bias.copy_(fused.bias)
                bn.bias.zero_()
            else:
                bn.bias.copy_(fused.bias)
    if example is not None:
        with torch.no_grad():
            want, got = folded.eval()(example), out(example)
        scale = float(want.abs().max()) or 1.0
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
            raise AssertionError(f"the unfolded model differs from the folded one by "
                                 f"{float((got - want).abs().max()):.3g} (outputs up to "
                                 f"{scale:.3g})")
    return out


def _output_ndims(model: nn.Module, example: torch.Tensor | None) -> dict[str, int]:
    """Number of dimensions of each Linear's output on ``example`` (forward hooks)."""
    if example is None:
        return {}
    out: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: object, o: torch.Tensor) -> None:
            out.setdefault(name, o.dim())  # a hook that returned a value would replace o
        return record

    hooks = [m.register_forward_hook(hook(n))
             for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return out


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


# -- the analog network ------------------------------------------------------------------
class AnalogNetwork(nn.Module):
    """A converted copy of a model: ``net`` runs the model's own forward with its weight
    layers on the crossbar. ``layers`` lists the analog matrices in mapping order."""

    def __init__(self, net: nn.Module, state: AnalogState, report: list[LayerReport],
                 base: nn.Module, twins: dict[str, nn.Module]) -> None:
        super().__init__()
        self.net = net
        object.__setattr__(self, "_base", base)  # the float model it was made from
        object.__setattr__(self, "_twins", twins)  # module path -> analog twin
        self.state = state
        self.log_gain = state.log_gain  # registered once here, shared by every layer
        self.report = report
        self.layers: list[tuple[str, AnalogMatrix]] = [
            (n, m) for n, m in net.named_modules() if isinstance(m, AnalogMatrix)]

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def to_float(self) -> nn.Module:
        """A float copy of the (BatchNorm-folded) model with this network's weights, as
        training leaves them (clipped), and its digital parameters."""
        out = copy.deepcopy(self._base)
        with torch.no_grad():
            for name, twin in self._twins.items():
                twin.export_to(out.get_submodule(name))
            # digital parameters and buffers (norms, embeddings, unfolded BatchNorm)
            mine = dict(self.net.named_parameters()) | dict(self.net.named_buffers())
            for name, t in list(out.named_parameters()) + list(out.named_buffers()):
                owner = name.rpartition(".")[0]
                if any(owner == n or owner.startswith(n + ".") for n in self._twins):
                    continue
                if name in mine and mine[name].shape == t.shape:
                    t.copy_(mine[name].detach())
        return out.eval()

    @property
    def matrices(self) -> list[AnalogMatrix]:
        return [m for _, m in self.layers]

    def set_programmed(self, weights: Sequence[torch.Tensor] | None,
                       gdc: Sequence[float] | None = None) -> None:
        """Weights read back from conductances (None: the float weights) and the drift
        compensation factor of every analog matrix."""
        for k, m in enumerate(self.matrices):
            m.programmed = None if weights is None else weights[k]
            m.gdc = 1.0 if gdc is None else float(gdc[k])


def convert_to_analog(model: nn.Module, periphery: Periphery | None = None, *,
                      keep_digital: Iterable[str] = (), example: torch.Tensor | None = None,
                      fold: bool = True) -> AnalogNetwork:
    """A copy of ``model`` with BatchNorm folded and every Linear, Conv1d, Conv2d (any
    groups), LSTM, GRU and MultiheadAttention on the crossbar, except the modules whose
    name matches a ``keep_digital`` pattern (fnmatch, e.g. ``"conv1"``, ``"head.*"``; a
    pattern that names a module keeps all of it digital)."""
    patterns = list(keep_digital)
    state = AnalogState(periphery or Periphery())
    if fold:
        net, report = fold_batchnorm(model, example)
    else:
        net, report = copy.deepcopy(model).eval(), []
    base = copy.deepcopy(net)
    folded_into = {r.reason.removeprefix("folded into ") for r in report
                   if r.placement == "folded"}
    used = {p: False for p in patterns}

    def digital_by_user(name: str) -> bool:
        hit = False
        for p in patterns:
            parts = name.split(".")
            if any(fnmatch.fnmatchcase(".".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
                used[p] = hit = True
        return hit

    if _twin(net, state) != (None, None):
        raise ConfigError(f"the model is itself one weight layer ({type(net).__name__}); "
                          "wrap it in nn.Sequential")
    own_root = sum(p.numel() for p in net.parameters(recurse=False))
    if own_root:
        report.append(LayerReport(f"({type(net).__name__})", type(net).__name__, "digital",
                                  "parameters used directly by the model's forward",
                                  own_root))
    twins: dict[int, nn.Module] = {}
    names: dict[int, str] = {}
    for name, m in net.named_modules():
        if not name or id(m) in names:
            continue
        names[id(m)] = name
        twin, reason = _twin(m, state)
        own = sum(p.numel() for p in m.parameters(recurse=False))
        if twin is None and reason is None:
            if own and not isinstance(m, _BN) and not _inside_twin(name, twins, names):
                report.append(LayerReport(name, type(m).__name__, "digital",
                                          "not a weight layer", own))
            continue
        if _inside_twin(name, twins, names):
            continue
        weights = sum(p.numel() for p in m.parameters())
        if digital_by_user(name):
            report.append(LayerReport(name, type(m).__name__, "digital",
                                      "kept digital by the user", weights))
            twins[id(m)] = m
            continue
        if twin is None:
            report.append(LayerReport(name, type(m).__name__, "digital", str(reason), weights))
            twins[id(m)] = m
            continue
        note = "on the chip" + (" (BatchNorm folded in)" if name in folded_into else "")
        report.append(LayerReport(name, type(m).__name__, "chip", note, weights))
        twins[id(m)] = twin
    unused = [p for p, hit in used.items() if not hit]
    if unused:
        raise ConfigError(f"keep-digital pattern(s) {', '.join(map(repr, unused))} match no "
                          "weight layer of the model; layers: "
                          + ", ".join(r.name for r in report if r.placement != "folded"))
    # swap every reference (a module used twice is one analog twin, mapped once)
    for _parent_name, parent in list(net.named_modules(remove_duplicate=False)):
        for attr, child in list(parent.named_children()):
            twin = twins.get(id(child))
            if twin is not None and twin is not child:
                setattr(parent, attr, twin)
    for m in net.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False  # the nested path reads the raw attention weights
    if not any(isinstance(m, AnalogMatrix) for m in net.modules()):
        raise ConfigError("the model has no weight layer to put on the chip (Linear, Conv1d, "
                          "Conv2d, LSTM, GRU, MultiheadAttention), or all are kept digital")
    placed = {n: twins[i] for i, n in names.items()
              if isinstance(twins.get(i), _ANALOG_TWINS)}
    order = {n: i for i, n in enumerate(names.values())}
    network = AnalogNetwork(net, state,
                            sorted(report, key=lambda r: order.get(r.name, len(order))),
                            base, placed)
    log.info("%d weight matrices on the chip", len(network.layers))
    return network


def _inside_twin(name: str, twins: dict[int, nn.Module], names: dict[int, str]) -> bool:
    """Is ``name`` a submodule of a module already replaced (or kept whole)?"""
    return any(name.startswith(names[i] + ".") for i in twins)


_ANALOG_TWINS = (AnalogMatrix, AnalogLSTM, AnalogGRU, AnalogMultiheadAttention)


def crossbar_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of a float model that go on the chip (the matrices of its Linear,
    Conv1d, Conv2d, LSTM, GRU and MultiheadAttention modules), each once."""
    out: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            out.setdefault(id(m.weight), m.weight)
        elif isinstance(m, nn.LSTM | nn.GRU):
            for name, p in m.named_parameters(recurse=False):
                if name.startswith("weight_"):
                    out.setdefault(id(p), p)
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                p = getattr(m, name, None)
                if p is not None:
                    out.setdefault(id(p), p)
    return list(out.values())


def _twin(m: nn.Module, state: AnalogState) -> tuple[nn.Module | None, str | None]:
    """(analog twin, None), (None, why not) for a weight layer, (None, None) otherwise."""
    if isinstance(m, _ANALOG_TWINS):
        return None, "already analog"
    if isinstance(m, nn.Linear):
        return AnalogLinear.from_module(m, state), None
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        if isinstance(m, nn.ConvTranspose1d | nn.ConvTranspose2d):
            return None, "transposed convolutions are not supported"
        return AnalogConv.from_module(m, state), None
    if isinstance(m, nn.LSTM):
        if m.proj_size:
            return None, "LSTM with proj_size is not supported"
        return AnalogLSTM(m, state), None
    if isinstance(m, nn.GRU):
        return AnalogGRU(m, state), None
    if isinstance(m, nn.MultiheadAttention):
        why = unsupported_attention(m)
        return (None, why) if why else (AnalogMultiheadAttention(m, state), None)
    if isinstance(m, nn.RNNBase):
        return None, f"{type(m).__name__} is not supported (LSTM and GRU are)"
    if isinstance(m, nn.Conv3d | nn.ConvTranspose3d | nn.ConvTranspose1d | nn.ConvTranspose2d):
        return None, f"{type(m).__name__} is not supported (Conv1d and Conv2d are)"
    return None, None


# -- fingerprint -------------------------------------------------------------------------
def fingerprint(model: nn.Module) -> str:
    """A short hash of a model: its module tree (types), each module's settings (its
    ``extra_repr``: stride, padding, dilation, ...; for a class defined outside torch also
    its plain attributes and its source, since its ``forward`` can change the network
    without changing a tensor) and its weights (every tensor of its state dict, names,
    shapes and values)."""
    h = hashlib.sha256()
    sources: dict[type, str] = {}
    for name, m in model.named_modules():
        cls = type(m)
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}({m.extra_repr()})\n".encode())
        if not cls.__module__.startswith("torch."):
            if cls not in sources:
                sources[cls] = _class_source(cls)
            h.update(sources[cls].encode())
            h.update(repr(_plain_attributes(m)).encode())
    for name, t in model.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)}\n".encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _class_source(cls: type) -> str:
    """The source of the modules that define a module class and its bases outside torch
    (the whole file: a module-level function its ``forward`` calls is part of the network);
    where there is no source file, the class's source or the byte code of its methods."""
    out = []
    for k in cls.__mro__:
        if k.__module__.startswith(("torch.", "builtins")) or k is object:
            continue
        try:
            out.append(inspect.getsource(sys.modules[k.__module__]))
            continue
        except (OSError, TypeError, KeyError):
            pass
        try:
            out.append(inspect.getsource(k))
        except (OSError, TypeError):
            out += [f"{n}:{f.__code__.co_code.hex()}:{f.__code__.co_consts!r}"
                    for n, f in sorted(vars(k).items()) if inspect.isfunction(f)]
    return "\n".join(out)


def _plain_attributes(m: nn.Module) -> list[tuple[str, str]]:
    """A user module's public attributes of plain types (its constructor's settings)."""
    plain = (bool, int, float, str, type(None))

    def is_plain(v: object) -> bool:
        return isinstance(v, plain) or (isinstance(v, tuple | list)
                                        and all(is_plain(x) for x in v))

    return [(k, repr(v)) for k, v in sorted(vars(m).items())
            if not k.startswith("_") and k != "training" and is_plain(v)]
