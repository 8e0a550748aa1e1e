"""Hardware-aware training: quantizers, noise injection, the 4-bit benefit, deployment."""

import numpy as np
import pytest
import torch

from drivers import MockDriver
from mock_chip import FaultRates, MockChipConfig
from pcmlab.analog import quantize_learned
from pcmlab.evaluator import AnalogEvaluator, LayerRanges, Periphery
from pcmlab.nn_model import load_model_file, save_model_file
from pcmlab.tasks import load_digits, reference_cnn, train_classifier
from pcmlab.training import (
    TrainingConfig,
    hardware_aware,
    ranges_from_extra,
    train_analognets,
    train_clipped,
)
from protocols.deploy import DeployConfig, deploy_network


@pytest.mark.parametrize("signed", [True, False])
def test_quantizer_gradients_levels_and_range(signed: bool) -> None:
    torch.manual_seed(0)
    x = (torch.randn(5000) * 2).requires_grad_()
    log_hi = torch.tensor(0.0, requires_grad=True)  # hi = 1: many values saturate
    bits = 4
    q = quantize_learned(x, torch.exp(log_hi), bits, signed=signed)
    assert torch.unique(q.detach()).numel() <= 2**bits
    (q * torch.linspace(-1, 1, 5000)).sum().backward()
    inside = (x.detach().abs() < 0.9) if signed else (x.detach() > 0.1) & (x.detach() < 0.9)
    assert x.grad is not None and (x.grad[inside] != 0).all()  # straight through inside
    assert (x.grad[x.detach().abs() > 1.1] == 0).all()  # saturated: no gradient to x
    assert log_hi.grad is not None and log_hi.grad != 0  # the range learns


def test_ranges_stay_positive_and_noise_has_the_configured_std() -> None:
    torch.manual_seed(0)
    model = reference_cnn().eval()
    x = torch.rand(64, 1, 8, 8)
    ev = AnalogEvaluator(model, x, Periphery(dac_bits=5, adc_bits=4))
    net = hardware_aware(ev.network, [0.5, 0.4, 0.3, 0.2], TrainingConfig(eta=0.1, adc_bits=4))
    mats = net.matrices
    opt = torch.optim.SGD([p for m in mats for p in (m.log_in, m.log_out)] + [net.log_gain],
                          lr=50.0)
    for _ in range(5):  # a loss that pushes every range toward zero, hard
        net.train()
        loss = sum(m.input_range() + m.output_range() for m in mats)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(float(m.input_range().detach()) > 0 and float(m.output_range().detach()) > 0
               for m in mats)
    net.train()
    net.state.noise_std.clear()
    net(x)
    # the injected std is eta * W_max; the 256x32 layer has enough samples to tell
    assert net.state.noise_std[2] == pytest.approx(0.1 * 0.3, rel=0.05)
    assert len(net.state.noise_std) == 4
    net.eval()
    net.state.noise_std.clear()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert net.state.noise_std == [] and torch.equal(a, b)  # no noise at evaluation


def test_training_noise_reaches_the_outputs_and_the_gradient_goes_straight_through() -> None:
    torch.manual_seed(0)
    model = reference_cnn().eval()
    x = torch.rand(32, 1, 8, 8)
    ev = AnalogEvaluator(model, x, Periphery(dac_bits=None, adc_bits=None))
    net = hardware_aware(ev.network, [10.0] * 4, TrainingConfig(eta=0.05))
    net.train()
    a, b = net(x), net(x)
    assert not torch.allclose(a, b)  # a fresh weight draw on every forward
    net.state.eta = 0.0
    c, d = net(x), net(x)
    torch.testing.assert_close(c, d)
    w = net.matrices[-1].weight
    net.state.eta = 0.05
    net(x).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_stage1_clips_at_alpha_sigma() -> None:
    data = load_digits()
    cfg = TrainingConfig(stage1_epochs=2, alpha=1.5)
    result = train_clipped(reference_cnn(), data.x_train[:300], data.y_train[:300], cfg)
    for m in (m for m in result.model if isinstance(m, torch.nn.Linear)):
        w = m.weight.detach()
        assert float(w.abs().max()) <= 1.5 * float(w.std()) * 1.2


@pytest.fixture(scope="module")
def four_bit_models():
    data = load_digits(seed=0)
    cfg = TrainingConfig(adc_bits=4, seed=0)
    full = train_analognets(reference_cnn(0), data.x_train, data.y_train, cfg)
    plain = train_classifier(reference_cnn(0), data.x_train, data.y_train,
                             epochs=cfg.stage1_epochs + cfg.stage2_epochs, seed=0)
    return data, full, plain


@pytest.mark.slow
def test_full_method_beats_off_the_shelf_at_4_bits_after_a_day(four_bit_models) -> None:
    data, full, plain = four_bit_models
    day = [25.0, 86400.0]
    ev_full = AnalogEvaluator(full.model, data.x_train, full.periphery, ranges=full.ranges)
    ev_plain = AnalogEvaluator(plain, data.x_train, Periphery(dac_bits=5, adc_bits=4))
    acc_full = ev_full.simulate(data.x_test, data.y_test, ev_full.mapping(256, 512), day, 10,
                                np.random.default_rng(0)).mean[1]
    acc_plain = ev_plain.simulate(data.x_test, data.y_test, ev_plain.mapping(256, 512), day,
                                  10, np.random.default_rng(0)).mean[1]
    assert full.periphery.dac_bits == 5 and full.periphery.adc_bits == 4
    assert acc_full > acc_plain + 0.03, (acc_full, acc_plain)


@pytest.mark.slow
def test_trained_model_deploys_through_the_measured_path(four_bit_models, tmp_path) -> None:
    data, full, _ = four_bit_models
    path = save_model_file(full.model, tmp_path / "full.pt", input_shape=(1, 8, 8),
                           extra=full.extra())
    loaded = load_model_file(path)
    ranges = ranges_from_extra(loaded.extra)
    assert isinstance(ranges, LayerRanges) and ranges == full.ranges
    periphery = Periphery.model_validate(loaded.extra["periphery"])
    ev = AnalogEvaluator(loaded.model, data.x_train, periphery, ranges=ranges)
    driver = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=2,
                                              faults=FaultRates.none()))
    r = deploy_network(driver, ev, data.x_test, data.y_test, tmp_path / "dep.h5",
                       DeployConfig(simulated_runs=5, periphery=periphery))
    assert r.measured_accuracy.size == r.time_s.size > 5
    assert r.measured_accuracy[0] > 0.9
    assert abs(r.measured_accuracy[0] - r.simulated.mean[0]) < 0.03


def test_trained_ranges_find_their_layers_by_name() -> None:
    data = load_digits()
    cfg = TrainingConfig(stage1_epochs=1, stage2_epochs=1, adc_bits=6)
    r = train_analognets(reference_cnn(0), data.x_train[:200], data.y_train[:200], cfg)
    assert r.ranges.names == ("0", "2", "7", "9")
    loaded = ranges_from_extra(r.extra())
    assert loaded == r.ranges
    ev = AnalogEvaluator(r.model, data.x_train, r.periphery, ranges=loaded,
                         keep_digital=["9"])  # the last layer digital now
    got = {n: m.ranges() for n, m in ev.network.layers}
    assert set(got) == {"0", "2", "7"}
    assert got["7"][1] == pytest.approx(r.ranges.input_hi[2], rel=1e-6)
    assert got["7"][2] == pytest.approx(r.ranges.output[2], rel=1e-6)
    from pcmlab.errors import ConfigError

    partial = LayerRanges(*(v[:3] for v in (loaded.input_lo, loaded.input_hi, loaded.output)),
                          names=loaded.names[:3])
    with pytest.raises(ConfigError, match="no trained DAC/ADC range for 9"):
        AnalogEvaluator(r.model, data.x_train, r.periphery, ranges=partial)
