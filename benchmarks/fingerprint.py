"""Fixed-seed arrays of the hot paths, saved or compared bit for bit: the check that a
speed change did not move the physics. Not a benchmark (run_all.py does not run it).

    python benchmarks/fingerprint.py save before.npz     # on the code before the change
    python benchmarks/fingerprint.py compare before.npz  # after it: exit 1 on any difference

Covered: mock-chip SET/RESET/read sequences (zero and default timing, repeated and
unordered cells, scalar and per-cell amplitudes, reads after the clock moved past t0),
program-and-verify on the mock, the evaluator's simulated mode (every run's and time's
weights and drift-compensation factors, and the accuracies) and a few steps of
hardware-aware training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common  # noqa: F401  (takes this folder off sys.path: see _common.py)
import numpy as np
import torch
from _common import zero_timing


def chip_arrays(out: dict[str, np.ndarray]) -> None:
    from mock_chip import MockChip

    for name, timing in (("zero", zero_timing()), ("default", None)):
        kw = {} if timing is None else {"timing": timing}
        chip = MockChip(geometry={"rows": 256, "cols": 512}, seed=7, **kw)
        n = chip.n_cells
        rng = np.random.default_rng(1)
        cells = np.arange(n, dtype=np.uint32)
        for k in range(4):
            chip.apply_pulses(cells, "SET", 110.0 + 10 * k, 500.0)
            out[f"chip_{name}_set{k}"] = chip.read()
        some = rng.choice(n, 5000, replace=True).astype(np.uint32)  # repeats, unordered
        chip.apply_pulses(some, "RESET", rng.uniform(200, 400, some.size), 50.0)
        out[f"chip_{name}_reset_read"] = chip.read(some)
        chip.apply_pulses(cells[1000:9000], "SET", rng.uniform(90, 160, 8000), 500.0)
        out[f"chip_{name}_block_read"] = chip.read(cells[500:20000])
        for t in (1e-4, 30.0, 3600.0, 1e6):
            chip.clock.advance(t)
            out[f"chip_{name}_late_read_{t:g}"] = chip.read()
            chip.apply_pulses(cells[::3], "SET", 130.0, 500.0)
            out[f"chip_{name}_late_set_read_{t:g}"] = chip.read(cells[::7])
        out[f"chip_{name}_g_prog"] = chip.devices.g_prog_us
        out[f"chip_{name}_t_prog"] = chip.devices.t_prog_s
        out[f"chip_{name}_nu"] = chip.devices.nu
        out[f"chip_{name}_q"] = chip.devices.q_s


def program_verify_arrays(out: dict[str, np.ndarray]) -> None:
    from drivers import MockDriver
    from mock_chip import MockChipConfig
    from protocols import program_and_verify

    for name, timing in (("zero", zero_timing()), ("default", None)):
        kw = {} if timing is None else {"timing": timing}
        driver = MockDriver(config=MockChipConfig(geometry={"rows": 128, "cols": 512},
                                                  seed=3, **kw))
        n = 128 * 512
        target = np.random.default_rng(0).uniform(0, 25, n).astype(np.float32)
        r = program_and_verify(driver, np.arange(n, dtype=np.uint32), target)
        out[f"pv_{name}_g"] = np.asarray(r.g_us)
        out[f"pv_{name}_iterations"] = np.asarray(r.iterations)
        out[f"pv_{name}_converged"] = np.asarray(r.converged)
        out[f"pv_{name}_last_pulse"] = np.asarray(r.last_pulse_s)
        out[f"pv_{name}_set_pulses"] = np.asarray(r.set_pulses)
        out[f"pv_{name}_reset_pulses"] = np.asarray(r.reset_pulses)
    # zero targets (re-RESET until they read low), both overshoot policies, progress counts
    from protocols import OvershootPolicy, ProgramVerifyConfig

    for policy in OvershootPolicy:
        driver = MockDriver(config=MockChipConfig(geometry={"rows": 64, "cols": 512}, seed=5))
        n = 64 * 512
        rng = np.random.default_rng(2)
        target = np.where(rng.random(n) < 0.3, 0, rng.uniform(0, 25, n)).astype(np.float32)
        seen: list[tuple[int, int, int, int]] = []
        r = program_and_verify(
            driver, rng.permutation(n).astype(np.uint32), target,
            ProgramVerifyConfig(overshoot=policy, record_traces=True),
            progress=lambda p, seen=seen: seen.append(
                (p.iteration, p.n_converged, p.n_total, p.n_active)))
        for field in ("g_us", "iterations", "converged", "last_pulse_s", "set_pulses",
                      "reset_pulses"):
            out[f"pv_{policy.value}_{field}"] = np.asarray(getattr(r, field))
        for key, trace in r.traces.items():
            out[f"pv_{policy.value}_trace_{key}"] = trace
        out[f"pv_{policy.value}_progress"] = np.asarray(seen)
        out[f"pv_{policy.value}_calls"] = np.asarray(r.n_driver_calls)


def evaluator_arrays(out: dict[str, np.ndarray]) -> None:
    from examples.networks import ResNet
    from pcmlab.evaluator import AnalogEvaluator, Periphery
    from pcmlab.pcm_model import ACCURACY_TIMES_S

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ResNet(channels=(8, 16, 16), in_channels=3).eval()
    x = torch.rand(8, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    ev = AnalogEvaluator(net, torch.rand(16, 3, 16, 16, generator=gen), Periphery())
    mapping = ev.mapping(256, 512)
    real, k = ev.evaluate, [0]

    def record(x_, y_, weights=None, gdc=None, **kw):
        for i, w in enumerate(weights):
            out[f"ev_w{k[0]}_{i}"] = w.numpy().copy()
        if gdc is not None:
            out[f"ev_gdc{k[0]}"] = np.asarray([float(g) for g in gdc])
        k[0] += 1
        return real(x_, y_, weights, gdc, **kw)

    ev.evaluate = record
    sim = ev.simulate(x, y, mapping, ACCURACY_TIMES_S, 3, np.random.default_rng(5))
    out["ev_acc"] = sim.accuracy


def training_arrays(out: dict[str, np.ndarray]) -> None:
    from examples.networks import ResNet
    from pcmlab.evaluator import AnalogEvaluator, Periphery
    from pcmlab.training import TrainingConfig, hardware_aware

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    model = ResNet(channels=(8, 16, 16), in_channels=3).eval()
    cfg = TrainingConfig(adc_bits=8, eta=0.05)
    ev = AnalogEvaluator(model, x[:16], Periphery(dac_bits=9, adc_bits=8))
    w_clip = [cfg.alpha * float(m.weight.detach().std()) for m in ev.network.matrices]
    net = hardware_aware(ev.network, w_clip, cfg)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    torch.manual_seed(2)
    for i in range(0, 32, 8):
        net.state.noise_std.clear()
        loss = torch.nn.functional.cross_entropy(net(x[i:i + 8]), y[i:i + 8])
        out[f"train_loss{i}"] = np.asarray(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for j, p in enumerate(net.parameters()):
        out[f"train_p{j}"] = p.detach().numpy().copy()


def main() -> int:
    torch.set_num_threads(1)
    what, path = sys.argv[1], Path(sys.argv[2])
    out: dict[str, np.ndarray] = {}
    for part in (chip_arrays, program_verify_arrays, evaluator_arrays, training_arrays):
        part(out)
    if what == "save":
        np.savez(path, **out)
        print(f"{len(out)} arrays saved to {path}")
        return 0
    before = np.load(path)
    differ = [k for k in out if k not in before
              or not np.array_equal(before[k], out[k], equal_nan=True)
              or before[k].dtype != out[k].dtype]
    missing = [k for k in before.files if k not in out]
    for k in differ + missing:
        print(f"DIFFERS: {k}")
    print(f"{len(out)} arrays compared bit for bit with {path}: "
          f"{len(differ) + len(missing)} differ")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
