"""Analog layers on any nn.Module: every weight layer on the chip once, the model's own
forward kept, the periphery really in the forward pass."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.networks import FACTORIES
from pcmlab.analog import Periphery, convert_to_analog, crossbar_parameters
from pcmlab.errors import ConfigError
from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches

IDEAL = Periphery(dac_bits=None, adc_bits=None)


def inputs(model: nn.Module, n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *model.input_shape), generator=torch.Generator().manual_seed(seed))


def warmed(model: nn.Module) -> nn.Module:
    """Give BatchNorms running statistics that are not the identity."""
    model.train()
    with torch.no_grad():
        for k in range(3):
            model(inputs(model, 32, seed=k) * 2)
    return model.eval()


class Odd(nn.Module):
    """Strided, dilated, grouped, reflect-padded convolutions, a Linear used twice, a
    BatchNorm that follows no convolution, a raw parameter, and an MHA with kdim."""

    input_shape = (4, 9, 9)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=2, groups=4,
                           padding_mode="reflect")
        self.b = nn.Conv2d(8, 8, 3, padding="same", groups=8, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.shared = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.full((8,), 1.5))
        self.attn = nn.MultiheadAttention(8, 2, kdim=8, vdim=8, batch_first=True)

    def forward(self, x):
        y = self.norm(torch.relu(self.b(self.a(x))))  # BN after a ReLU: not foldable
        z = y.flatten(2).transpose(1, 2)  # (N, L, 8)
        z = self.shared(self.shared(z)) * self.scale
        z, _ = self.attn(z, z, z, need_weights=True)
        return z.mean(dim=1)


MODELS = {**{k: f for k, f in FACTORIES.items()}, "odd": Odd}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_weight_goes_on_the_chip_once_and_the_forward_is_kept(name: str) -> None:
    torch.manual_seed(0)
    model = warmed(MODELS[name]())
    x = inputs(model)
    net = convert_to_analog(model, IDEAL, example=x)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
    # every crossbar weight of the model is one analog matrix (no layer silently digital,
    # none mapped twice): the counts of weights agree, the names are unique
    want = sum(p.numel() for p in crossbar_parameters(model))
    got = sum(m.weight.numel() for m in net.matrices)
    assert got == want and len({n for n, _ in net.layers}) == len(net.layers)
    # and each of them is really used by the forward: zeroing one changes the output
    with torch.no_grad():
        ref = net(x)
        for layer_name, m in net.layers:
            m.programmed = torch.zeros_like(m.weight)
            assert not torch.allclose(net(x), ref), f"{layer_name} is not in the forward"
            m.programmed = None
        net.set_programmed(None)


def test_odd_model_report_and_sharing() -> None:
    model = warmed(Odd())
    net = convert_to_analog(model, IDEAL, example=inputs(model))
    where = {r.name: (r.placement, r.reason) for r in net.report}
    assert where["norm"][0] == "digital" and "does not directly follow" in where["norm"][1]
    assert where["attn"][0] == "chip" and where["a"][0] == "chip"
    assert [n for n, _ in net.layers].count("shared") == 1  # used twice, mapped once
    assert net.net.shared is net.net.shared  # the same twin at both calls
    assert isinstance(net.net.scale, nn.Parameter)  # the raw parameter stays digital


def test_batchnorm_folding_is_reported_and_exact() -> None:
    model = warmed(FACTORIES["resnet"]())
    x = inputs(model)
    net = convert_to_analog(model, IDEAL, example=x)
    folded = [r for r in net.report if r.placement == "folded"]
    assert len(folded) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(r.reason.startswith("folded into ") for r in folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)


def test_keep_digital_by_pattern() -> None:
    model = warmed(FACTORIES["resnet"]())
    x = inputs(model)
    net = convert_to_analog(model, IDEAL, example=x, keep_digital=["stem.*", "head"])
    names = [n for n, _ in net.layers]
    assert "head" not in names and not any(n.startswith("stem") for n in names)
    kept = {r.name for r in net.report if r.reason == "kept digital by the user"}
    assert {"stem.0", "head"} <= kept
    with pytest.raises(ConfigError, match="'nope' match no weight layer"):
        convert_to_analog(model, IDEAL, example=x, keep_digital=["nope"])


@pytest.mark.parametrize("name", ["resnet", "lstm", "transformer", "kws_cnn"])
def test_the_periphery_is_in_the_forward(name: str) -> None:
    torch.manual_seed(1)
    model = warmed(FACTORIES[name]())
    x = inputs(model, 64)
    outs = {}
    for label, p in {"8": Periphery(), "dac3": Periphery(dac_bits=3),
                     "adc3": Periphery(adc_bits=3), "gain": Periphery(adc_gain=0.5)}.items():
        ev = AnalogEvaluator(model, x, p)
        outs[label] = ev.logits(x)
        ideal = ev.logits(x, quantized=False)
    with torch.no_grad():
        torch.testing.assert_close(ideal, model(x), rtol=1e-4, atol=1e-5)
    assert (outs["8"] - ideal).abs().max() < 0.05 * ideal.abs().max()
    for label in ("dac3", "adc3", "gain"):
        assert (outs[label] - outs["8"]).abs().max() > 1e-3, label


def test_halving_the_adc_gain_saturates_the_adc() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    x = torch.randn(512, 16)
    ev = AnalogEvaluator(model, x, Periphery(adc_bits=8, dac_bits=8, adc_gain=1.0))
    out_range = ev.ranges.output[0]
    ev2 = AnalogEvaluator(model, x, Periphery(adc_bits=8, dac_bits=8, adc_gain=2.0),
                          ranges=ev.ranges)
    bias = model[0].bias.detach()
    y2 = ev2.logits(x) - bias
    assert float(y2.abs().max()) == pytest.approx(out_range / 2, rel=1e-3)  # saturates


def test_metric_loader_and_to_float(digits_model) -> None:
    d = digits_model.data
    ev = AnalogEvaluator(digits_model.model, DataLoader(TensorDataset(d.x_train, d.y_train),
                                                         batch_size=200))
    loader = DataLoader(TensorDataset(d.x_test, d.y_test), batch_size=97)
    acc = ev.accuracy(loader)
    assert acc == pytest.approx(ev.accuracy(d.x_test, d.y_test))
    loss = ev.evaluate(loader, metric=nn.CrossEntropyLoss())
    with torch.no_grad():
        ref = float(nn.CrossEntropyLoss()(ev.logits(d.x_test), d.y_test))
    assert loss == pytest.approx(ref, rel=1e-4)
    top2 = ev.evaluate(d.x_test, d.y_test, metric=lambda o, y: (o.topk(2, 1).indices == y[:, None])
                       .any(1).float().mean())
    assert top2 >= acc
    back = ev.network.to_float()
    with torch.no_grad():
        torch.testing.assert_close(back(d.x_test), digits_model.model.eval()(d.x_test),
                                   rtol=1e-4, atol=1e-4)


def test_simulated_mode_runs_any_network() -> None:
    model = warmed(FACTORIES["lstm"]())
    x = inputs(model, 64)
    y = torch.randint(0, 10, (64,))
    ev = AnalogEvaluator(model, x, IDEAL)
    mapping = ev.mapping(128, 256)
    assert [lm.name for lm in mapping.layers] == ["lstm.matrices.ih_l0",
                                                  "lstm.matrices.hh_l0", "fc"]
    quiet = ev.simulate(x, y, mapping, [25.0], 1, np.random.default_rng(0),
                        noise=NoiseSwitches(programming=False, drift=False, read=False,
                                            faults=False))
    assert quiet.accuracy[0, 0] == pytest.approx(ev.ideal_accuracy(x, y))


@pytest.mark.parametrize("conv", [
    lambda: nn.Conv2d(4, 6, 3, padding=1), lambda: nn.Conv2d(4, 6, 4, padding="same"),
    lambda: nn.Conv2d(4, 6, 3, padding="valid", stride=2),
    lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, padding_mode="reflect"),
    lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2, padding_mode="circular"),
    lambda: nn.Conv1d(4, 6, 4, padding="same"),
    lambda: nn.Conv1d(4, 8, 3, padding=1, groups=4, stride=2),
    lambda: nn.Conv1d(4, 6, 3, padding=1, padding_mode="replicate")])
def test_chip_mode_im2col_is_the_convolution(conv) -> None:
    """Chip mode turns a convolution into row vectors for the array (padding of every
    form, stride, dilation, groups): with an exact product in place of the chip, the
    result is the convolution's."""
    import warnings

    from pcmlab.analog.chip import ChipBackend
    from pcmlab.analog.layers import AnalogConv, AnalogState
    from pcmlab.analog.periphery import Periphery

    torch.manual_seed(0)
    layer = AnalogConv(conv(), AnalogState(Periphery()))
    w, g = layer.weight.detach(), layer.groups
    backend = object.__new__(ChipBackend)  # no chip: the exact product instead
    backend.layer_of = {id(layer): None}
    backend._codes = lambda layer, x: (x, 1.0)
    backend._matmul = lambda layer, lm, rows, hi: torch.einsum(
        "mgi,goi->mgo", rows.reshape(rows.shape[0], g, -1),
        w.reshape(g, w.shape[0] // g, -1)).reshape(rows.shape[0], -1)
    x = torch.randn(2, 4, 9, 9) if w.dim() == 4 else torch.randn(2, 4, 11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "same" with an even kernel pads a copy
        expected = layer.mac(x, w)
    got = backend._chip_mac(layer, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_range_or_gain_changed_after_a_forward_is_the_one_used() -> None:
    """The layers keep their DAC/ADC ranges as floats between forwards: every way of
    changing a range (set_ranges, an in-place write as an optimizer makes, another
    parameter, the shared gain) must reach the next forward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    x = torch.randn(256, 16)
    net = convert_to_analog(model, Periphery(adc_bits=4, dac_bits=4)).eval()
    layer = next(m for m in net.modules() if hasattr(m, "set_ranges"))
    layer.set_ranges(-1.0, 1.0, 2.0)

    def fresh() -> torch.Tensor:
        """The same layer with no cached range: what the forward must give."""
        layer._range_cache.clear()
        with torch.no_grad():
            return net(x)

    with torch.no_grad():
        first = net(x)
    torch.testing.assert_close(first, fresh(), rtol=0, atol=0)
    changes = {
        "set_ranges": lambda: layer.set_ranges(-3.0, 3.0, 0.5),
        "in-place write": lambda: layer.log_in.data.add_(0.7),
        "new parameter": lambda: setattr(layer, "log_out",
                                         nn.Parameter(torch.tensor(1.3), requires_grad=False)),
        "gain in place": lambda: layer.state.log_gain.data.sub_(0.9),
    }
    for label, change in changes.items():
        with torch.no_grad():
            before = net(x)
            change()
            after = net(x)
        assert not torch.equal(before, after), label
        torch.testing.assert_close(after, fresh(), rtol=0, atol=0, msg=label)
