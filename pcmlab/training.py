"""Hardware-aware training, the AnalogNets two-stage method (Garofalo et al., "AnalogNets:
ML-HW co-design of noise-robust TinyML models and always-on analog compute-in-memory
accelerator", 2022).

Stage 1 trains in float with every crossbar weight clipped at alpha * sigma_W (sigma_W
recomputed every 10 steps). Stage 2 fixes those clip ranges as W_max, adds Gaussian
weight noise eta * W_max on every forward pass (straight-through gradient), and puts DAC
and ADC quantizers with learned ranges (straight-through rounding) around every crossbar
layer, one ADC gain shared by all layers, the DAC one bit wider than the ADC.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError
from pcmlab.evaluator import LayerRanges, Periphery
from pcmlab.nn_model import ANALOG, fold_batchnorm

log = logging.getLogger(__name__)

EpochCallback = Callable[[str, int, float, float], None]  # stage, epoch, loss, accuracy
_LOG_FLOOR = -20.0


class TrainingConfig(StrictModel):
    """Settings of the two stages (defaults train the digits CNN in seconds)."""

    stage1_epochs: int = Field(30, ge=1)
    stage2_epochs: int = Field(20, ge=0)
    lr: float = Field(3e-3, gt=0)
    stage2_lr: float = Field(1e-3, gt=0)
    batch: int = Field(64, ge=1)
    alpha: float = Field(2.5, gt=0, description="clip weights at alpha * sigma_W")
    sigma_every: int = Field(10, ge=1, description="steps between sigma_W updates")
    eta: float = Field(0.05, ge=0, description="weight noise std relative to W_max")
    adc_bits: int = Field(8, ge=2, le=16, description="the DAC gets one bit more")
    quant_noise: float = Field(0.0, ge=0, lt=1,
                               description="share of values left unquantized in training")
    seed: int = Field(0, ge=0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def quantize_ste(x: torch.Tensor, hi: torch.Tensor, bits: int, *, signed: bool,
                 keep: float = 0.0) -> torch.Tensor:
    """Quantizer with a learned range ``hi`` (> 0): unsigned over [0, hi] or symmetric over
    [-hi, hi], a level at zero, straight-through rounding; gradients reach ``x`` inside the
    range and ``hi`` (saturated values and the step). ``keep``: share of values left
    unquantized (quantization-noise training)."""
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    lo = -hi if signed else torch.zeros_like(hi)
    xc = torch.minimum(torch.maximum(x, lo), hi)
    step = hi / qmax
    q = round_ste(xc / step) * step
    if keep > 0:
        mask = torch.rand_like(x) < keep
        q = torch.where(mask, xc, q)
    return q


class HardwareAwareNet(nn.Module):
    """A Sequential with its crossbar layers wrapped for stage 2."""

    def __init__(self, model: nn.Sequential, w_clip: list[float], ranges: LayerRanges,
                 config: TrainingConfig) -> None:
        super().__init__()
        self.body = model
        self.config = config
        self.analog = [i for i, m in enumerate(model) if isinstance(m, ANALOG)]
        self.register_buffer("w_clip", torch.tensor(w_clip, dtype=torch.float32))
        self.signed_input = [lo < 0 for lo in ranges.input_lo]
        self.log_in = nn.Parameter(torch.log(torch.tensor(
            [max(abs(lo), hi, 1e-6) for lo, hi in zip(ranges.input_lo, ranges.input_hi,
                                                       strict=True)])))
        self.log_out = nn.Parameter(torch.log(torch.tensor(ranges.output).clamp_min(1e-6)))
        self.log_gain = nn.Parameter(torch.zeros(()))  # one ADC gain for all layers
        self.noise_std: list[float] = []  # the injected std of each layer, last forward

    @property
    def dac_bits(self) -> int:
        return self.config.adc_bits + 1

    # Ranges are exp(log-parameter): positive by construction; the log is floored so that
    # a range cannot underflow to zero however hard the optimizer pushes.
    def input_range(self, k: int) -> torch.Tensor:
        return torch.exp(self.log_in[k].clamp(min=_LOG_FLOOR))

    def output_range(self, k: int) -> torch.Tensor:
        return (torch.exp(self.log_out[k].clamp(min=_LOG_FLOOR))
                / torch.exp(self.log_gain.clamp(_LOG_FLOOR, -_LOG_FLOOR)))

    def noisy_weight(self, k: int, w: torch.Tensor) -> torch.Tensor:
        clip = self.w_clip[k]
        w = torch.clamp(w, -clip, clip)
        if self.training and self.config.eta > 0:
            noise = torch.randn_like(w) * (self.config.eta * clip)
            self.noise_std.append(float(noise.std()))
            w = w + noise.detach()  # straight through: d(w + n)/dw = 1
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.noise_std = []
        keep = self.config.quant_noise if self.training else 0.0
        k = 0
        for i, layer in enumerate(self.body):
            if i not in self.analog:
                x = layer(x)
                continue
            x = quantize_ste(x, self.input_range(k), self.dac_bits,
                             signed=self.signed_input[k], keep=keep)
            w = self.noisy_weight(k, layer.weight)
            if isinstance(layer, nn.Conv2d):
                y = F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation)
            else:
                y = F.linear(x, w)
            y = quantize_ste(y, self.output_range(k), self.config.adc_bits, signed=True,
                             keep=keep)
            if layer.bias is not None:
                y = y + (layer.bias.view(1, -1, 1, 1) if y.dim() == 4 else layer.bias)
            x = y
            k += 1
        return x

    def export(self) -> tuple[nn.Sequential, LayerRanges, Periphery]:
        """The plain model (weights clipped), its ranges and periphery for the evaluator."""
        model = copy.deepcopy(self.body).eval()
        with torch.no_grad():
            for k, i in enumerate(self.analog):
                clip = float(self.w_clip[k])
                model[i].weight.clamp_(-clip, clip)
            ins = [float(self.input_range(k)) for k in range(len(self.analog))]
            outs = [float(torch.exp(self.log_out[k].clamp(min=_LOG_FLOOR)))
                    for k in range(len(self.analog))]
            gain = float(torch.exp(self.log_gain.clamp(_LOG_FLOOR, -_LOG_FLOOR)))
        ranges = LayerRanges(
            input_lo=tuple(-r if s else 0.0 for r, s in zip(ins, self.signed_input,
                                                           strict=True)),
            input_hi=tuple(ins), output=tuple(outs))
        periphery = Periphery(dac_bits=self.dac_bits, adc_bits=self.config.adc_bits,
                              adc_gain=gain)
        return model, ranges, periphery


@dataclass
class TrainingResult:
    model: nn.Sequential
    ranges: LayerRanges | None
    periphery: Periphery | None
    w_clip: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def extra(self) -> dict[str, Any]:
        """What goes into the model file for the evaluator and the deploy protocol."""
        out: dict[str, Any] = {"w_clip": self.w_clip, "history": self.history}
        if self.ranges is not None and self.periphery is not None:
            out["ranges"] = {"input_lo": list(self.ranges.input_lo),
                             "input_hi": list(self.ranges.input_hi),
                             "output": list(self.ranges.output)}
            out["periphery"] = self.periphery.model_dump()
        return out


def ranges_from_extra(extra: dict[str, Any]) -> LayerRanges | None:
    r = extra.get("ranges")
    if not r:
        return None
    return LayerRanges(tuple(r["input_lo"]), tuple(r["input_hi"]), tuple(r["output"]))


def _epochs(module: nn.Module, params, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
            lr: float, batch: int, gen: torch.Generator, stage: str,
            after_step: Callable[[int], None] | None, on_epoch: EpochCallback | None,
            history: list[dict[str, Any]]) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]
    step = 0
    for epoch in range(1, epochs + 1):
        module.train()
        perm = torch.randperm(n, generator=gen)
        total, correct = 0.0, 0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            out = module(x[idx])
            loss = loss_fn(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
            total += float(loss.detach()) * idx.numel()
            correct += int((out.argmax(1) == y[idx]).sum())
        history.append({"stage": stage, "epoch": epoch, "loss": total / n,
                        "accuracy": correct / n})
        log.info("%s epoch %d: loss %.4f, train accuracy %.4f", stage, epoch, total / n,
                 correct / n)
        if on_epoch is not None:
            on_epoch(stage, epoch, total / n, correct / n)


def train_analognets(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
    config: TrainingConfig | None = None, *, on_epoch: EpochCallback | None = None,
    stage1: TrainingResult | None = None,
) -> TrainingResult:
    """Both stages on (x, y); returns the exported model with its trained ranges.

    ``stage1``: a finished stage-1 result to start stage 2 from (one stage 1 can serve
    several ADC widths)."""
    from pcmlab.evaluator import AnalogEvaluator

    cfg = config or TrainingConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    if stage1 is None:
        stage1 = train_clipped(model, x, y, cfg, on_epoch=on_epoch)
    history += stage1.history
    body = fold_batchnorm(stage1.model)
    if not any(isinstance(m, ANALOG) for m in body):
        raise ConfigError("the model has no Linear or Conv2d layer to train for the chip")
    calibrated = AnalogEvaluator(body, x, Periphery(dac_bits=None, adc_bits=None)).ranges
    net = HardwareAwareNet(copy.deepcopy(body), stage1.w_clip, calibrated, cfg)
    if cfg.stage2_epochs:
        _epochs(net, net.parameters(), x, y, epochs=cfg.stage2_epochs, lr=cfg.stage2_lr,
                batch=cfg.batch, gen=gen, stage="stage 2", after_step=None,
                on_epoch=on_epoch, history=history)
    exported, ranges, periphery = net.export()
    return TrainingResult(exported, ranges, periphery, stage1.w_clip, history)


def train_clipped(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                  config: TrainingConfig | None = None, *,
                  on_epoch: EpochCallback | None = None) -> TrainingResult:
    """Stage 1: float training with crossbar weights clipped at alpha * sigma_W."""
    cfg = config or TrainingConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    analog = [m for m in model if isinstance(m, ANALOG)]
    clips = [float("inf")] * len(analog)

    def clip(step: int) -> None:
        with torch.no_grad():
            for k, m in enumerate(analog):
                if step % cfg.sigma_every == 1 or cfg.sigma_every == 1:
                    clips[k] = cfg.alpha * float(m.weight.std())
                m.weight.clamp_(-clips[k], clips[k])

    history: list[dict[str, Any]] = []
    _epochs(model, model.parameters(), x, y, epochs=cfg.stage1_epochs, lr=cfg.lr,
            batch=cfg.batch, gen=gen, stage="stage 1", after_step=clip, on_epoch=on_epoch,
            history=history)
    model.eval()
    with torch.no_grad():  # the clip ranges, fixed from here on, of the folded weights
        folded = [m for m in fold_batchnorm(model) if isinstance(m, ANALOG)]
        w_clip = [cfg.alpha * float(m.weight.std()) or float(m.weight.abs().max()) or 1.0
                  for m in folded]
    return TrainingResult(model, None, None, w_clip, history)
