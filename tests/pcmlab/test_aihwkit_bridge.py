"""The aihwkit bridge, against a real aihwkit (1.1, its torch tile): the PCM model out,
an aihwkit-trained network onto the mock chip, measured conductances back.

aihwkit is an optional extra; CI installs it, so there a missing aihwkit fails."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

if os.environ.get("CI"):
    import aihwkit  # noqa: F401  (CI must have it: a missing aihwkit is a failure there)
else:
    pytest.importorskip("aihwkit")

from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.optim import AnalogSGD
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from aihwkit.simulator.parameters.enums import (
    WeightClipType,
    WeightModifierType,
)

from examples.networks import mlp
from pcmlab.bridge.aihwkit import aihwkit_params, aihwkit_simulate, to_aihwkit
from pcmlab.bridge.aihwkit_checkpoint import from_aihwkit
from pcmlab.bridge.fusion import fusion_import_torch, read_fusion_csv, weights_from_fusion
from pcmlab.cli import main
from pcmlab.config import load_model
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches, Periphery
from pcmlab.pcm_model import ACCURACY_TIMES_S, PCMCalibration, PCMModel
from pcmlab.store import RunReader
from pcmlab.tasks import load_digits

pytestmark = pytest.mark.slow
DAY_S = 86400.0


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0, input_shape=(1, 8, 8))


def hwa_config() -> TorchInferenceRPUConfig:
    """aihwkit's hardware-aware training settings, as its PCM inference examples use
    them: weight noise, clipping, column-wise mapping scales, learned output scales and
    input ranges, 8-bit DAC and ADC."""
    c = TorchInferenceRPUConfig()
    c.modifier.type = WeightModifierType.ADD_NORMAL
    c.modifier.std_dev = 0.06
    c.clip.type = WeightClipType.FIXED_VALUE
    c.clip.fixed_value = 1.0
    c.mapping.weight_scaling_omega = 1.0
    c.mapping.weight_scaling_columnwise = True
    c.mapping.learn_out_scaling = True
    c.pre_post.input_range.enable = True
    c.pre_post.input_range.learn_input_range = True
    c.pre_post.input_range.init_from_data = 20
    c.forward.inp_res = 1 / (2**8 - 2)
    c.forward.out_res = 1 / (2**8 - 2)
    c.noise_model = PCMLikeNoiseModel(g_max=25.0)
    c.drift_compensation = GlobalDriftCompensation()
    return c


@pytest.fixture(scope="module")
def hwa(tmp_path_factory, digits):
    """An MLP trained as aihwkit's PCM inference examples do it: a digital model trained
    first, converted with aihwkit's hardware-aware settings and fine-tuned in aihwkit;
    saved as aihwkit does (``torch.save(model.state_dict())``)."""
    model = convert_to_analog(_float_mlp(digits), hwa_config())
    torch.manual_seed(0)
    opt = AnalogSGD(model.parameters(), lr=0.05)
    opt.regroup_param_groups(model)
    for _ in range(4):
        model.train()
        order = torch.randperm(len(digits.y_train))
        for i in range(0, len(order), 32):
            b = order[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(digits.x_train[b]),
                                        digits.y_train[b]).backward()
            opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("aihwkit") / "hwa.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _agree(pcmlab_acc: np.ndarray, aihwkit_acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|difference of the means| and the bound: 1 point, or 3 standard errors of the
    difference where the spread is large (accuracy collapsing)."""
    diff = np.abs(pcmlab_acc.mean(0) - aihwkit_acc.mean(0))
    se = np.sqrt(pcmlab_acc.var(0, ddof=1) / len(pcmlab_acc)
                 + aihwkit_acc.var(0, ddof=1) / len(aihwkit_acc))
    return diff, np.maximum(0.01, 3 * se)


def _float_mlp(digits) -> nn.Module:
    torch.manual_seed(1)
    model = mlp(1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(digits.x_train), digits.y_train).backward()
        opt.step()
    return model.eval()


def _check_agreement(model: nn.Module, digits, calibration: PCMCalibration | None,
                     runs: int = 12) -> list[str]:
    times = np.array(ACCURACY_TIMES_S)
    report = []
    for gdc in (True, False):
        evaluator = AnalogEvaluator(model, digits.x_train, Periphery(dac_bits=None,
                                                                     adc_bits=None))
        sim = evaluator.simulate(digits.x_test, digits.y_test, evaluator.mapping(256, 512),
                                 times, runs, np.random.default_rng(3),
                                 pcm=PCMModel(calibration),
                                 noise=NoiseSwitches(drift_compensation=gdc,
                                                     faults=False))  # not in aihwkit
        export = to_aihwkit(calibration, drift_compensation=gdc, perfect_periphery=True)
        analog = convert_to_analog(model, export.rpu_config)
        theirs = aihwkit_simulate(analog, digits.x_test, digits.y_test, times, runs,
                                  t0_s=export.params["t0_s"], seed=4)
        diff, bound = _agree(sim.accuracy, theirs)
        report.append(f"GDC {gdc}: pcmlab {np.round(100 * sim.mean, 2)} aihwkit "
                      f"{np.round(100 * theirs.mean(0), 2)}")
        assert (diff <= bound).all(), report[-1]
    return report


def test_the_exported_model_agrees_with_the_simulated_mode(digits) -> None:
    report = _check_agreement(_float_mlp(digits), digits, None)
    print("\n".join(report))


def test_a_fitted_chip_model_goes_to_aihwkit_and_agrees(tmp_path: Path, digits) -> None:
    """A mock chip whose drift and 1/f noise are not the published ones is characterized
    and fitted; the fit goes to aihwkit as a module that needs no pcmlab, and aihwkit with
    it agrees with pcmlab's simulated mode with the fit."""
    chip = tmp_path / "chip.json"
    chip.write_text(json.dumps({"calibration": {"drift_mu_coeffs": [-0.03, 0.03],
                                                "drift_mu_range": [0.08, 0.2],
                                                "read_noise_q": 0.02}}))
    char, cal, module = tmp_path / "char.h5", tmp_path / "cal.toml", tmp_path / "chip_pcm.py"
    assert main(["characterize", "-o", str(char), "--cells-per-level", "300",
                 "--chip", str(chip)]) == 0
    assert main(["fit", str(char), "-o", str(cal), "--aihwkit", str(module)]) == 0
    fitted = load_model(PCMCalibration, cal)
    assert fitted.drift_mu_range[0] > 0.06  # the fit saw the chip's stronger drift
    # the module imports with pcmlab unimportable, and carries the fitted constants
    code = (f"import sys; sys.modules['pcmlab'] = None; sys.path.insert(0, {str(tmp_path)!r});"
            "import json, chip_pcm; print(json.dumps(chip_pcm.PARAMS));"
            "print(type(chip_pcm.rpu_config().noise_model).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    params_line, kind = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(params_line) == json.loads(json.dumps(aihwkit_params(fitted)))
    assert kind == "CalibratedPCMNoiseModel"
    print("\n".join(_check_agreement(_float_mlp(digits), digits, fitted)))


def test_an_aihwkit_checkpoint_gives_aihwkits_weights_and_periphery(hwa) -> None:
    model, path = hwa
    imported = from_aihwkit(mlp(0), path)
    mine = dict(imported.model.named_modules())
    for name, layer in model.named_analog_layers():
        w, b = layer.get_weights()  # aihwkit's effective weights (all scales applied)
        assert torch.allclose(mine[name].weight, w, atol=1e-6), name
        assert torch.allclose(mine[name].bias, b, atol=1e-6), name
        assert imported.input_ranges[name] == pytest.approx(
            float(layer.analog_module.input_range.detach()))
    assert (imported.periphery.dac_bits, imported.periphery.adc_bits) == (8, 8)
    # the same from a live model's state dict
    live = from_aihwkit(mlp(0), model.state_dict())
    assert torch.equal(dict(live.model.named_modules())["1"].weight, mine["1"].weight)
    assert any("weight modifier" in line for line in imported.not_mapped)


def _wide() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(600, 32), nn.ReLU(), nn.Linear(32, 10))


def test_a_layer_aihwkit_split_into_tiles_comes_with_its_weights() -> None:
    """aihwkit 1.1 splits a layer larger than 512 inputs or outputs into tiles
    (``0.analog_module.array.i.j``); the import assembles them, scales and all."""
    c = TorchInferenceRPUConfig()
    c.mapping.max_input_size = 256  # three input blocks
    c.mapping.max_output_size = 20  # two output blocks
    c.mapping.weight_scaling_omega = 1.0
    c.mapping.weight_scaling_columnwise = True
    analog = convert_to_analog(_wide(), c)
    with torch.no_grad():
        for _, layer in analog.named_analog_layers():
            w, b = layer.get_weights()
            layer.set_weights(torch.randn_like(w) * 0.1, b)
    assert len(list(analog[0].analog_module.array)) == 3
    imported = from_aihwkit(_wide(), analog.state_dict())
    mine = dict(imported.model.named_modules())
    for name, layer in analog.named_analog_layers():
        w, b = layer.get_weights()
        assert torch.allclose(mine[name].weight, w, atol=1e-6), name
        assert torch.allclose(mine[name].bias, b, atol=1e-6), name
    assert any("6 tiles assembled" in line for line in imported.mapped)
    # an analog layer with no tile weights in the state is refused, by name
    state = {k: v for k, v in analog.state_dict().items()
             if not (k.startswith("0.") and k.endswith("analog_tile_state"))}
    with pytest.raises(SchemaError, match=r"layer\(s\) 0: no tile weights"):
        from_aihwkit(_wide(), state)


def test_layers_with_different_converter_bits_are_refused() -> None:
    c8, c6 = TorchInferenceRPUConfig(), TorchInferenceRPUConfig()
    c8.forward.inp_res = c8.forward.out_res = 1 / (2**8 - 2)
    c6.forward.inp_res = c6.forward.out_res = 1 / (2**6 - 2)
    analog = convert_to_analog(_wide(), c8)
    analog[2] = convert_to_analog(_wide()[2], c6)
    with pytest.raises(ConfigError, match=r"layer 2 has DAC/ADC resolution.*layer 0"):
        from_aihwkit(_wide(), analog.state_dict())


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path, hwa) -> None:
    model, _ = hwa
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = dict(model.state_dict())
    state["evil"] = Payload()
    path = tmp_path / "evil.pt"
    torch.save(state, path)  # torch's own protocol (2), as aihwkit's files are
    with pytest.raises(SchemaError, match="would run pickled code"):
        from_aihwkit(mlp(0), path)
    torch.save(state, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(SchemaError):
        from_aihwkit(mlp(0), path)
    # and through the command line: one line, nothing run
    assert main(["deploy", "examples.networks:mlp", "--weights", str(path), "-o",
                 str(tmp_path / "x.h5")]) == 2
    assert not marker.exists()


def test_an_aihwkit_network_deploys_and_comes_back_through_fusion(
        tmp_path: Path, hwa, digits, capsys: pytest.CaptureFixture[str]) -> None:
    model, ckpt = hwa
    run = tmp_path / "net.h5"
    assert main(["deploy", "examples.networks:mlp", "--weights", str(ckpt), "-o", str(run),
                 "--runs", "2", "--rows", "64", "--cols", "256"]) == 0
    out = capsys.readouterr().out
    assert "from aihwkit" in out and "not mapped" in out
    with RunReader(run) as r:
        ev = r.evaluation()
    k = int(np.argmin(np.abs(ev["measured_time_s"] - DAY_S)))
    measured_day = float(ev["measured_accuracy"][k])
    theirs = aihwkit_simulate(model, digits.x_test, digits.y_test, [DAY_S], 8, seed=5)
    print(f"1 day: measured on the mock {100 * measured_day:.2f} %, aihwkit's simulation "
          f"{100 * theirs.mean():.2f} ± {100 * theirs.std():.2f} %")
    assert abs(measured_day - theirs.mean()) <= 0.02

    # the readout at 1 day in the Fusion layout: values are (G+ - G-) x sign(W)
    csv = tmp_path / "day.csv"
    assert main(["aihwkit", "fusion-export", str(run), "--model", "examples.networks:mlp",
                 "--weights", str(ckpt), "--time", str(DAY_S), "-o", str(csv)]) == 0
    layers = read_fusion_csv(csv)
    assert [x.name for x in layers] == ["1", "3"]
    imported = from_aihwkit(mlp(0), ckpt)
    with RunReader(run) as r:
        g_day = r.readouts().conductance_us[k]
        cells = r.targets().cell
    # first weight of layer "1": its pair is the first two devices of the layer's block
    n1 = 48 * 64
    w = dict(imported.model.named_modules())["1"].weight
    d = g_day[0] - g_day[n1]  # mapping.targets order: all G+ of the layer, then all G-
    assert cells.size == 2 * (n1 + 10 * 48)
    assert layers[0].conductance_us[0, 0] == pytest.approx(d * np.sign(float(w[0, 0].detach())),
                                                           abs=1e-4)

    # aihwkit evaluates the network on those conductances as its Fusion flow does
    config = hwa_config()
    config.forward.is_perfect = True
    analog = convert_to_analog(mlp(0), config)
    # the trained state as saved (our own file; the fixture's model has drifted since)
    analog.load_state_dict(torch.load(ckpt, weights_only=False), load_rpu_config=False)
    fusion_import_torch(csv, analog)
    with torch.no_grad():
        acc_aihwkit = float((analog(digits.x_test).argmax(1) == digits.y_test).float().mean())
    # pcmlab reading the file back forms the same weights (its periphery off, as aihwkit's)
    evaluator = AnalogEvaluator(imported.model, digits.x_train,
                                Periphery(dac_bits=None, adc_bits=None))
    names = [name for name, _ in evaluator.network.layers]
    back = weights_from_fusion(layers, dict(zip(names, evaluator.weights, strict=True)))
    acc_back = evaluator.accuracy(digits.x_test, digits.y_test, [back[n] for n in names])
    assert main(["aihwkit", "fusion-evaluate", str(csv), "--model", "examples.networks:mlp",
                 "--weights", str(ckpt)]) == 0
    out = capsys.readouterr().out
    print(f"1 day through Fusion: aihwkit {100 * acc_aihwkit:.2f} %, read back by pcmlab "
          f"{100 * acc_back:.2f} %, pcmlab measured {100 * measured_day:.2f} %; {out.strip()}")
    assert abs(acc_aihwkit - acc_back) <= 0.003
    assert abs(acc_aihwkit - measured_day) <= 0.01


def test_fusion_evaluate_uses_the_bits_the_deployment_used(
        tmp_path: Path, hwa, digits, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``deploy --bits 3`` run's Fusion file evaluates at 3 bits, not the model's 8."""
    _, ckpt = hwa
    run, csv = tmp_path / "b3.h5", tmp_path / "b3.csv"
    model = ["--model", "examples.networks:mlp", "--weights", str(ckpt)]
    assert main(["deploy", "examples.networks:mlp", "--weights", str(ckpt), "-o", str(run),
                 "--runs", "1", "--rows", "64", "--cols", "256", "--bits", "3"]) == 0
    assert main(["aihwkit", "fusion-export", str(run), *model, "-o", str(csv)]) == 0
    capsys.readouterr()
    assert main(["aihwkit", "fusion-evaluate", str(csv), *model]) == 0
    out = capsys.readouterr().out
    assert "3-bit DAC, 3-bit ADC" in out
    printed = float(out.split("accuracy ")[1].split(" %")[0])
    from pcmlab.cli.network import _evaluator_for, _model_and_data

    loaded, data = _model_and_data("examples.networks:mlp", ckpt, None)
    for bits in (3, None):
        ev = _evaluator_for(loaded, data, bits, [])
        names = [name for name, _ in ev.network.layers]
        back = weights_from_fusion(read_fusion_csv(csv), dict(zip(names, ev.weights,
                                                                   strict=True)))
        acc = 100 * ev.accuracy(data.x_test, data.y_test, [back[n] for n in names])
        print(f"Fusion file of a 3-bit deployment at {bits or 'the model'}'s bits: {acc:.2f} %")
        if bits == 3:
            assert printed == pytest.approx(acc, abs=0.006)
        else:
            assert abs(printed - acc) > 1.0  # the test can tell 3 bits from 8
    # a Fusion CSV with no record beside it needs --bits
    (tmp_path / "b3.csv.pcmlab.json").unlink()
    assert main(["aihwkit", "fusion-evaluate", str(csv), *model]) == 2
    assert "give --bits N" in capsys.readouterr().err
    assert main(["aihwkit", "fusion-evaluate", str(csv), *model, "--bits", "3"]) == 0
    assert f"accuracy {printed:.2f} %" in capsys.readouterr().out


class _Net(nn.Module):
    """A model whose root is not nn.Sequential (aihwkit wraps it in AnalogWrapper)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.act, self.fc2 = nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_fusion_layer_numbers_of_a_model_whose_root_is_not_sequential(tmp_path: Path) -> None:
    from aihwkit.utils.export import _fusion_get_csv_header

    from pcmlab.bridge.fusion import fusion_layers, fusion_ordinals, write_fusion_csv

    net = _Net()
    analog = convert_to_analog(_Net(), TorchInferenceRPUConfig())
    theirs = [int(v) for v in _fusion_get_csv_header(analog).splitlines()[0].split(",")]
    ordinals = fusion_ordinals(net)
    assert [ordinals["fc1"], ordinals["fc2"]] == theirs == [1, 3]
    weights = {n: dict(net.named_modules())[n].weight.detach() for n in ("fc1", "fc2")}
    csv = write_fusion_csv(fusion_layers(net, weights, {n: 10 * w.abs() for n, w in
                                                        weights.items()}), tmp_path / "n.csv")
    fusion_import_torch(csv, analog)  # aihwkit's header check accepts it


def test_the_exported_noise_model_draws_pcmlabs_statistics() -> None:
    """Per level, on constants that are not the published ones (a programming-noise
    polynomial that dips below zero near G_max, where pcmlab clips it and aihwkit's own
    would not): the spread of the programmed state, the drift exponent's mean and spread
    and Q_s are pcmlab's."""
    cal = PCMCalibration(prog_noise_coeffs_us=(0.3, 2.0, -3.0), drift_mu_coeffs=(-0.03, 0.03),
                         drift_mu_range=(0.06, 0.2), read_noise_q=0.02)
    model, noise = PCMModel(cal), to_aihwkit(cal).noise_model
    torch.manual_seed(0)
    for g_us in (2.0, 10.0, 22.0):
        g = torch.full((400_000,), g_us)
        spread = float((noise.apply_programming_noise_to_conductance(g) - g_us).std())
        assert spread == pytest.approx(float(model.prog_noise_sigma_us(g_us)), abs=0.01)
        nu, q_s = noise.generate_drift_coefficients(g)
        mu, sd = float(model.drift_nu_mean(g_us)), float(model.drift_nu_std(g_us))
        assert float(nu.mean()) == pytest.approx(mu, rel=0.01)
        assert float(nu.std()) == pytest.approx(sd, rel=0.02)
        assert float(q_s[0]) == pytest.approx(float(model.read_noise_q(g_us)), rel=1e-5)
        # 1/f read noise at several t: the spread about the drifted conductance is pcmlab's
        # (at 10 and 22 µS, where the clamp at zero does not cut the distribution)
        if g_us < 5.0:
            continue
        nu_fixed = torch.full_like(g, 0.05)
        for t_s in (25.0, 3600.0, DAY_S, 365 * DAY_S):
            g_t = noise.apply_drift_noise_to_conductance(g, torch.stack([nu_fixed, q_s]), t_s)
            t = t_s + noise.t_0  # aihwkit's t_inference counts from t0
            g_drift = g_us * (t / noise.t_0) ** -0.05
            sigma = float(model.read_noise_sigma_us(g_drift, g_us, t))
            assert float(g_t.mean()) == pytest.approx(g_drift, rel=1e-3), t_s
            assert float(g_t.std()) == pytest.approx(sigma, rel=0.01), (g_us, t_s)
