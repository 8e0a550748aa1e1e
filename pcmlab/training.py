"""Hardware-aware training, the AnalogNets two-stage method (Garofalo et al., "AnalogNets:
ML-HW co-design of noise-robust TinyML models and always-on analog compute-in-memory
accelerator", 2022).

Stage 1 trains in float with every crossbar weight clipped at alpha * sigma_W (sigma_W
recomputed every 10 steps). Stage 2 fixes those clip ranges as W_max, adds Gaussian
weight noise eta * W_max on every forward pass (straight-through gradient), and puts DAC
and ADC quantizers with learned ranges (straight-through rounding) around every crossbar
layer, one ADC gain shared by all layers, the DAC one bit wider than the ADC. Stage 2 runs
the same analog layers (``pcmlab.analog``) as the evaluator, in training mode; any
``nn.Module`` trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import nn

from pcmlab.analog import (
    AnalogNetwork,
    LayerRanges,
    Periphery,
    crossbar_parameters,
    unfold_batchnorm,
)
from pcmlab.config import StrictModel
from pcmlab.errors import ConfigError

log = logging.getLogger(__name__)

EpochCallback = Callable[[str, int, float, float], None]  # stage, epoch, loss, accuracy


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
    dac_bits: int | None = Field(None, ge=1, le=16, description="DAC bits; None: one more "
                                 "than adc_bits")
    quant_noise: float = Field(0.0, ge=0, lt=1,
                               description="share of values left unquantized in training")
    seed: int = Field(0, ge=0)


@dataclass
class TrainingResult:
    model: nn.Module
    ranges: LayerRanges | None
    periphery: Periphery | None
    w_clip: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    # BatchNorm folded into the layer before it for stage 2: name -> layer. ``model`` has
    # the model's own architecture; such a BatchNorm is an identity there (its scale in
    # the layer's weights), so the model's own load_state_dict takes its state dict
    folded_batchnorm: dict[str, str] = field(default_factory=dict)

    def extra(self) -> dict[str, Any]:
        """What goes into the model file for the evaluator and the deploy protocol."""
        out: dict[str, Any] = {"w_clip": self.w_clip, "history": self.history}
        if self.ranges is not None and self.periphery is not None:
            out["ranges"] = {"input_lo": list(self.ranges.input_lo),
                             "input_hi": list(self.ranges.input_hi),
                             "output": list(self.ranges.output),
                             "names": list(self.ranges.names or [])}
            out["periphery"] = self.periphery.model_dump()
        return out


def ranges_from_extra(extra: dict[str, Any]) -> LayerRanges | None:
    r = extra.get("ranges")
    if not r:
        return None
    return LayerRanges(tuple(r["input_lo"]), tuple(r["input_hi"]), tuple(r["output"]),
                       tuple(r["names"]) if r.get("names") else None)


def hardware_aware(network: AnalogNetwork, w_clip: list[float], config: TrainingConfig
                   ) -> AnalogNetwork:
    """Switch an analog network (ranges calibrated) into stage-2 training: weights clipped
    at ``w_clip`` per matrix, weight noise eta * w_clip, learned DAC/ADC ranges and gain."""
    mats = network.matrices
    if len(w_clip) != len(mats):
        raise ConfigError(f"{len(w_clip)} clip ranges for {len(mats)} analog matrices")
    for m, clip in zip(mats, w_clip, strict=True):
        m.w_clip = float(clip)
        m.log_in.requires_grad_(True)
        m.log_out.requires_grad_(True)
    st = network.state
    st.eta, st.learn_ranges, st.quant_noise = config.eta, True, config.quant_noise
    network.log_gain.requires_grad_(True)
    return network


def export_trained(network: AnalogNetwork, config: TrainingConfig
                   ) -> tuple[nn.Module, LayerRanges, Periphery]:
    """The float model (weights clipped), its trained ranges and periphery."""
    mats = network.matrices
    ranges = [m.ranges() for m in mats]
    periphery = Periphery(dac_bits=config.dac_bits or config.adc_bits + 1,
                          adc_bits=config.adc_bits, adc_gain=float(network.state.gain.detach()))
    return network.to_float(), LayerRanges(
        tuple(r[0] for r in ranges), tuple(r[1] for r in ranges),
        tuple(r[2] for r in ranges), tuple(n for n, _ in network.layers)), periphery


def _epochs(module: nn.Module, params, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
            lr: float, batch: int, gen: torch.Generator, stage: str,
            after_step: Callable[[int], None] | None, on_epoch: EpochCallback | None,
            history: list[dict[str, Any]], before_step: Callable[[], None] | None = None
            ) -> None:
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
            if before_step is not None:
                before_step()
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
    model: nn.Module, x: torch.Tensor, y: torch.Tensor,
    config: TrainingConfig | None = None, *, on_epoch: EpochCallback | None = None,
    stage1: TrainingResult | None = None, keep_digital: tuple[str, ...] = (),
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
    periphery = Periphery(dac_bits=cfg.dac_bits or cfg.adc_bits + 1, adc_bits=cfg.adc_bits)
    # ranges calibrated on the float network, then learned
    ev = AnalogEvaluator(stage1.model, x, periphery, keep_digital=keep_digital)
    w_clip = [cfg.alpha * float(m.weight.detach().std()) or float(m.weight.abs().max()) or 1.0
              for m in ev.network.matrices]
    net = hardware_aware(ev.network, w_clip, cfg)
    if cfg.stage2_epochs:
        _epochs(net, [p for p in net.parameters() if p.requires_grad], x, y,
                epochs=cfg.stage2_epochs, lr=cfg.stage2_lr, batch=cfg.batch, gen=gen,
                stage="stage 2", after_step=None, on_epoch=on_epoch, history=history,
                before_step=net.state.noise_std.clear)
    net.eval()
    exported, ranges, periph = export_trained(net, cfg)
    folded = {r.name: r.reason.removeprefix("folded into ") for r in ev.report
              if r.placement == "folded"}
    if folded:  # trained folded; returned in the model's own form (folding is deployment's)
        exported = unfold_batchnorm(stage1.model, exported, folded, example=x[:64])
    return TrainingResult(exported, ranges, periph, w_clip, history, folded)


def train_clipped(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  config: TrainingConfig | None = None, *,
                  on_epoch: EpochCallback | None = None) -> TrainingResult:
    """Stage 1: float training with crossbar weights clipped at alpha * sigma_W."""
    cfg = config or TrainingConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    weights = crossbar_parameters(model)
    if not weights:
        raise ConfigError("the model has no weight layer to train for the chip")
    clips = [float("inf")] * len(weights)

    def clip(step: int) -> None:
        with torch.no_grad():
            for k, w in enumerate(weights):
                if step % cfg.sigma_every == 1 or cfg.sigma_every == 1:
                    clips[k] = cfg.alpha * float(w.std())
                w.clamp_(-clips[k], clips[k])

    history: list[dict[str, Any]] = []
    _epochs(model, model.parameters(), x, y, epochs=cfg.stage1_epochs, lr=cfg.lr,
            batch=cfg.batch, gen=gen, stage="stage 1", after_step=clip, on_epoch=on_epoch,
            history=history)
    model.eval()
    return TrainingResult(model, None, None, [], history)
