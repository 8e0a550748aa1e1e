"""The evaluator: ideal, simulated and measured modes; periphery; model files."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from pcmlab.analog import fold_batchnorm
from pcmlab.errors import ConfigError, SchemaError
from pcmlab.evaluator import AnalogEvaluator, NoiseSwitches, Periphery, quantize
from pcmlab.nn_model import load_model_file, save_model_file

NO_NOISE = NoiseSwitches(programming=False, drift=False, read=False, faults=False)
TIMES = [25.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0]


def test_ideal_mode_equals_the_float_model(digits_model) -> None:
    m, d = digits_model.model, digits_model.data
    ev = AnalogEvaluator(m, d.x_train, Periphery())
    with torch.no_grad():
        ref = m.eval()(d.x_test)
        out = ev.logits(d.x_test, quantized=False)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    float_acc = float((ref.argmax(1) == d.y_test).float().mean())
    assert ev.ideal_accuracy(d.x_test, d.y_test) == pytest.approx(float_acc)
    assert float_acc > 0.95


def test_simulated_without_noise_equals_ideal(digits_model) -> None:
    m, d = digits_model.model, digits_model.data
    ev = AnalogEvaluator(m, d.x_train, Periphery(dac_bits=None, adc_bits=None))
    mapping = ev.mapping(256, 512)
    sim = ev.simulate(d.x_test, d.y_test, mapping, TIMES, 2, np.random.default_rng(0),
                      noise=NO_NOISE)
    ideal = ev.ideal_accuracy(d.x_test, d.y_test)
    assert np.allclose(sim.accuracy, ideal)
    # with 8-bit converters, noise off gives the quantized accuracy, close to ideal
    ev8 = AnalogEvaluator(m, d.x_train, Periphery())
    sim8 = ev8.simulate(d.x_test, d.y_test, mapping, TIMES[:1], 1, np.random.default_rng(0),
                        noise=NO_NOISE)
    assert sim8.accuracy[0, 0] == pytest.approx(ev8.accuracy(d.x_test, d.y_test))
    assert abs(sim8.accuracy[0, 0] - ideal) < 0.01


def test_drift_compensation_helps_at_one_year(digits_model) -> None:
    m, d = digits_model.model, digits_model.data
    ev = AnalogEvaluator(m, d.x_train, Periphery())
    mapping = ev.mapping(256, 512)
    kw = {"x": d.x_test, "y": d.y_test, "mapping": mapping, "times_s": [25.0, 365 * 86400.0],
          "n_runs": 10}
    with_gdc = ev.simulate(**kw, rng=np.random.default_rng(1))
    without = ev.simulate(**kw, rng=np.random.default_rng(1),
                          noise=NoiseSwitches(drift_compensation=False))
    assert with_gdc.mean[1] > without.mean[1] + 0.05


def test_quantizer_levels_and_saturation() -> None:
    x = torch.linspace(-3, 3, 10001)
    q = quantize(x, -2.0, 2.0, 4)
    assert torch.unique(q).numel() <= 2**4 - 1
    assert float(q.max()) == pytest.approx(2.0) and float(q.min()) == pytest.approx(-2.0)
    qu = quantize(x.abs(), 0.0, 2.0, 3)
    assert torch.unique(qu).numel() <= 2**3
    assert float(quantize(torch.zeros(1), -1.0, 1.0, 8)) == 0.0


def test_batchnorm_is_folded_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3), nn.BatchNorm1d(3), nn.Dropout(0.3))
    model.train()
    for _ in range(5):  # give the running statistics something to fold
        model(torch.randn(16, 2, 6, 6))
    model.eval()
    folded, report = fold_batchnorm(model, torch.randn(2, 2, 6, 6))
    assert [r.placement for r in report] == ["folded", "folded"]
    x = torch.randn(8, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in folded.modules())


@pytest.mark.parametrize(
    ("model", "match"),
    [(nn.Linear(4, 4), "is itself one weight layer"),
     (nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), "no weight layer to put on the chip")],
)
def test_models_without_a_chip_layer_are_refused(model, match) -> None:
    with pytest.raises(ConfigError, match=match):
        AnalogEvaluator(model, torch.zeros(2, 4))


def test_model_file_round_trip_and_safety(tmp_path, digits_model) -> None:
    path = save_model_file(digits_model.model, tmp_path / "m.pt", input_shape=(1, 8, 8),
                           extra={"note": "x"})
    loaded = load_model_file(path)
    x = digits_model.data.x_test[:50]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), digits_model.model.eval()(x))
    assert loaded.input_shape == (1, 8, 8) and loaded.extra == {"note": "x"}

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "pcmlab-model/1", "payload": Evil()}, evil)
    with pytest.raises(SchemaError, match="pickled code"):
        load_model_file(evil)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(SchemaError):
        load_model_file(plain)
    with pytest.raises(ConfigError, match="no such model file"):
        load_model_file(tmp_path / "none.pt")


def test_data_loader_feeds_the_evaluator(digits_model) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from pcmlab.tasks import tensors_from_loader

    d = digits_model.data
    loader = DataLoader(TensorDataset(d.x_test, d.y_test), batch_size=100, shuffle=False)
    x, y = tensors_from_loader(loader)
    assert torch.equal(x, d.x_test) and torch.equal(y, d.y_test)
    ev = AnalogEvaluator(digits_model.model, d.x_train)
    assert ev.ideal_accuracy(x, y) == pytest.approx(ev.ideal_accuracy(d.x_test, d.y_test))
    with pytest.raises(ConfigError, match="no batches"):
        tensors_from_loader([])


def test_torch_export_programs_are_refused_with_the_way_out(tmp_path) -> None:
    from pcmlab.nn_model import load_model

    model = nn.Sequential(nn.Linear(4, 2)).eval()
    program = torch.export.export(model, (torch.zeros(1, 4),))
    for name in ("m.pt2", "renamed.pt"):
        torch.export.save(program, tmp_path / name)
        with pytest.raises(ConfigError, match=r"torch\.export program.*pkg\.module:factory"):
            load_model(tmp_path / name)


def test_drift_compensation_is_referenced_to_the_readout_at_t0(digits_model) -> None:
    m, d = digits_model.model, digits_model.data
    ev = AnalogEvaluator(m, d.x_train, Periphery(dac_bits=None, adc_bits=None))
    mapping = ev.mapping(256, 512)
    _, g_t, _ = ev.device_targets(mapping)
    rows = np.stack([0.3 * g_t, g_t])  # a readout after a (uniform) drift, then one at t0
    size = lambda out, _y: out.abs().mean()  # noqa: E731  (a metric that sees the scale)
    at_t0 = ev.measured(d.x_test, d.y_test, mapping, rows, time_s=[3600.0, 20.0],
                        metric=size)
    assert at_t0[0] == pytest.approx(at_t0[1], rel=1e-4)  # alpha = 1 / 0.3 restores it
    ideal = ev.evaluate(d.x_test, d.y_test, quantized=False, metric=size)
    assert at_t0[0] == pytest.approx(ideal, rel=1e-3)  # the state at t0 is the reference
    first = ev.measured(d.x_test, d.y_test, mapping, rows, metric=size)  # first row: ref
    assert first[0] < 0.8 * at_t0[0]


def test_the_simulated_spread_is_the_sample_std_over_the_chips(tmp_path) -> None:
    """The runs are a sample of simulated chips: "± std" is their sample std (ddof 1),
    in the result and in the file; a single run has no spread (NaN, never ± 0)."""
    import h5py

    from pcmlab.evaluator import SimulatedAccuracy
    from pcmlab.store.evaluation import write_evaluation

    runs = np.array([[0.90, 0.80], [0.94, 0.84], [0.92, 0.88]])
    sim = SimulatedAccuracy(np.array([25.0, 3600.0]), runs)
    print("std over 3 runs", sim.std, "ddof 0 would be", runs.std(axis=0))
    np.testing.assert_allclose(sim.std, [0.02, 0.04])
    assert np.isnan(SimulatedAccuracy(np.array([25.0]), runs[:1, :1]).std).all()
    path = tmp_path / "e.h5"
    h5py.File(path, "w").close()
    write_evaluation(path, measured_time_s=[25.0], measured_accuracy=[0.9],
                     simulated_time_s=sim.time_s, simulated_accuracy=runs)
    with h5py.File(path) as f:
        np.testing.assert_allclose(f["evaluation/simulated_accuracy_std"][...], sim.std)
