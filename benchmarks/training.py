"""Hardware-aware training speed: one epoch of AnalogNets stage 2 (weights clipped, weight
noise, learned DAC/ADC ranges and gain, through the analog layers) beside one epoch of
plain torch training of the same network on the same data, both with Adam. Prints both
times and the ratio (target in benchmarks/registry.py: <= 1.5). Network: the ResNet-style
CNN of about 390 k weights on 3 x 32 x 32 synthetic inputs.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import Figures, add_report_options
from torch import nn

from examples.networks import ResNet
from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.training import TrainingConfig, hardware_aware


def epoch(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
          before_step=None) -> float:
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    t = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        if before_step is not None:
            before_step()
        loss = loss_fn(module(x[i:i + batch]), y[i:i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("training.py")
    torch.set_num_threads(1)  # both sides on one core
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    model = ResNet(channels=(24, 48, 96), in_channels=3).eval()
    cfg = TrainingConfig(adc_bits=8, eta=0.05)
    ev = AnalogEvaluator(model, x[:64], Periphery(dac_bits=9, adc_bits=8))
    w_clip = [cfg.alpha * float(m.weight.detach().std()) for m in ev.network.matrices]
    net = hardware_aware(ev.network, w_clip, cfg)
    plain = copy.deepcopy(model)
    t_hw, t_plain = [], []
    for _ in range(args.repeats):  # interleaved
        t_hw.append(epoch(net, x, y, args.batch, net.state.noise_std.clear))
        t_plain.append(epoch(plain, x, y, args.batch))
    th, tp = min(t_hw), min(t_plain)
    n = sum(m.weight.numel() for m in net.matrices)
    print(f"ResNet, {n} crossbar weights in {len(net.matrices)} matrices; one epoch of "
          f"{args.images} images of 3x32x32, batch {args.batch} (best of {args.repeats})")
    print(f"hardware-aware (stage 2): {th:.3f} s  ({th / args.images * 1e3:.2f} ms per image)")
    print(f"plain torch             : {tp:.3f} s  ({tp / args.images * 1e3:.2f} ms per image)")
    print(f"ratio                   : {th / tp:.2f}  ({figures.add('ratio', th / tp)})")
    figures.write(args.json)


if __name__ == "__main__":
    main()
