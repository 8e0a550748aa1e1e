"""A sweep's parts are named by a hash of everything that determines them (docs/sweeps.md):
change any one input alone and every part gets a new key; the network's fingerprint holds
its layers' settings and the source of its own module classes."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pcmlab import sweep
from pcmlab.analog import fingerprint
from pcmlab.tasks import Dataset

NET_V1 = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
'''
NET_V2 = NET_V1.replace("torch.relu(", "torch.sigmoid(")  # same tensors, another network


def net(module) -> nn.Module:
    torch.manual_seed(0)
    return module.Net()


@pytest.fixture()
def netmod(tmp_path: Path, monkeypatch):
    """A user's model module on sys.path (its source can change between two runs)."""
    (tmp_path / "fsnet.py").write_text(NET_V1)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fsnet", None)
    module = importlib.import_module("fsnet")
    yield tmp_path / "fsnet.py", module
    sys.modules.pop("fsnet", None)


def data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 8, 8, generator=g)
    y = torch.arange(20) % 10
    return Dataset(x[:12], y[:12], x[12:], y[12:])


BASE = {"axes": {"training": ["off-the-shelf"], "bits": [8]}, "runs": 4, "runs_per_task": 2,
        "times_s": [25.0, 3600.0]}


def keys(spec: dict, model: nn.Module, d: Dataset, base: Path | None = None) -> set[str]:
    tasks, _ = sweep.plan(sweep.SweepConfig.model_validate(spec), model, d, base)
    return {k for k, _, _ in tasks}


def test_changing_each_input_alone_gives_every_part_a_new_key(netmod, tmp_path: Path,
                                                              monkeypatch) -> None:
    path, module = netmod
    model, d = net(module), data()
    (tmp_path / "cal.toml").write_text("read_noise_q = 0.01\n")
    cal = {**BASE, "axes": {**BASE["axes"], "calibration": ["cal.toml"]}}
    ref = keys(BASE, model, d)
    ref_cal = keys(cal, model, d, tmp_path)
    assert len(ref) == 2  # two blocks of runs
    changed: dict[str, set[str]] = {}

    def spec_with(**kw) -> dict:
        return {**BASE, **kw}

    for field, value in {"seed": 1, "times_s": [25.0, 7200.0], "rows": 128, "cols": 256,
                         "runs_per_task": 4, "device": "cuda"}.items():
        changed[field] = keys(spec_with(**{field: value}), model, d)
    changed["axis value"] = keys(spec_with(axes={"training": ["off-the-shelf"],
                                                 "bits": [6]}), model, d)
    changed["faults"] = keys(spec_with(axes={"training": ["off-the-shelf"], "bits": [8],
                                             "faults": [False]}), model, d)
    changed["training method"] = keys(spec_with(axes={"training": ["noise"],
                                                      "bits": [8]}), model, d)
    for field, value in {"stage1_epochs": 3, "stage2_epochs": 2, "lr": 1e-2, "batch": 32,
                         "seed": 5, "eta": 0.1, "alpha": 3.0}.items():
        changed[f"training.{field}"] = keys(spec_with(training={field: value}), model, d)
    changed["keep_digital"] = keys(spec_with(network={"keep_digital": ["fc"]}), model, d)
    other = data()
    other.y_test[0] = 9 - other.y_test[0]
    changed["data"] = keys(BASE, model, other)
    weights = net(module)
    with torch.no_grad():
        weights.fc.weight[0, 0] += 1e-3
    changed["weights"] = keys(BASE, weights, d)
    strided = net(module)  # the same tensors, another layer setting
    strided.conv.padding = (2, 2)
    changed["padding"] = keys(BASE, strided, d)
    strided = net(module)
    strided.conv.stride = (2, 2)
    changed["stride"] = keys(BASE, strided, d)
    path.write_text(NET_V2)  # the same class, module and tensors; another forward
    changed["forward source"] = keys(BASE, net(importlib.reload(module)), d)
    path.write_text(NET_V1)
    importlib.reload(module)
    monkeypatch.setattr(sweep, "__version__", "99.0")
    changed["pcmlab version"] = keys(BASE, model, d)
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    changed["torch version"] = keys(BASE, model, d)
    monkeypatch.undo()
    assert keys(BASE, net(module), d) == ref  # nothing changed: the same keys
    (tmp_path / "cal.toml").write_text("read_noise_q = 0.02\n")
    changed["calibration file"] = keys(cal, model, d, tmp_path) | (ref & ref_cal)
    same = {what: sorted(k & ref) for what, k in changed.items() if k & ref or not k}
    print("inputs that kept a key:", sorted(same))
    assert not same, f"these inputs leave keys unchanged: {sorted(same)}"


def test_the_fingerprint_holds_the_layer_settings_and_the_source(netmod) -> None:
    path, module = netmod
    a = net(module)
    b = net(module)
    ref = fingerprint(a)
    assert ref == fingerprint(b)
    for attr, value in {"stride": (2, 2), "padding": (0, 0), "dilation": (2, 2)}.items():
        c = net(module)
        setattr(c.conv, attr, value)
        assert fingerprint(c) != ref, attr
    seq = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1))
    seq2 = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.2))
    seq2.load_state_dict(seq.state_dict())
    assert fingerprint(seq) != fingerprint(seq2)  # a hyperparameter without a tensor
    path.write_text(NET_V2)
    assert fingerprint(net(importlib.reload(module))) != ref


NET_ACT = NET_V1.replace("class Net", "def act(x):\n    return torch.relu(x)\n\n\nclass Net"
                         ).replace("torch.relu(self.conv(x))", "act(self.conv(x))")


def test_the_fingerprint_holds_a_module_level_function_the_forward_calls(netmod) -> None:
    """Two modules that differ only in a function outside the class (``act``) are two
    networks."""
    path, module = netmod
    path.write_text(NET_ACT)
    relu = net(importlib.reload(module))
    ref, ref_keys = fingerprint(relu), keys(BASE, relu, data())
    path.write_text(NET_ACT.replace("torch.relu(x)", "torch.tanh(x)"))
    tanh = net(importlib.reload(module))
    assert tanh.state_dict().keys() == relu.state_dict().keys()
    assert fingerprint(tanh) != ref
    assert keys(BASE, tanh, data()).isdisjoint(ref_keys)  # no sweep part is reused


def test_evaluate_refuses_a_network_with_another_stride(netmod) -> None:
    """The measurement file's "other network" refusal (pcmlab evaluate) sees a changed
    stride or padding, not only other weights."""
    from pcmlab.analog.periphery import Periphery
    from pcmlab.errors import ConfigError
    from pcmlab.evaluator import AnalogEvaluator

    _, module = netmod
    d = data()
    deployed = AnalogEvaluator(net(module), d.x_train, Periphery()).mapping(128, 128)
    changed = net(module)
    changed.conv.padding_mode = "reflect"  # the same tensors and shapes, another network
    with pytest.raises(ConfigError, match="does not match the measurement file"):
        AnalogEvaluator(changed, d.x_train, Periphery()).check_mapping(deployed)
    AnalogEvaluator(net(module), d.x_train, Periphery()).check_mapping(deployed)  # the same


def test_the_device_is_a_setting_and_a_worker_without_it_refuses() -> None:
    """Default CPU (an evaluation ran on CUDA whenever a worker had it); a device the
    worker lacks refuses the task naming it; a device torch does not know is refused in
    the sweep file."""
    from pydantic import ValidationError

    from pcmlab.errors import ConfigError
    from pcmlab.pcm_model import PCMCalibration

    assert sweep.SweepConfig().device == "cpu"
    with pytest.raises(ValidationError, match="'gpu0' is not a torch device"):
        sweep.SweepConfig(device="gpu0")
    config = sweep.SweepConfig(device="cuda:7")
    task = sweep.EvalTask((), 0, 1, 0, (25.0,), 8, 8, (), PCMCalibration(), config.device)
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match=r"sweep device 'cuda:7': this worker .* has no"):
        sweep.eval_task(task, sweep.Trained(nn.Linear(2, 2)), data(), config)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_results_and_parts_get_the_mode_of_a_plainly_created_file(tmp_path: Path,
                                                                  umask: int) -> None:
    """Written atomically (a temporary file replaced into place), they were 0600 whatever
    the umask: a colleague in the lab group could not read them."""
    import stat

    import numpy as np
    import xarray as xr

    old = os.umask(umask)
    try:
        out = tmp_path / "sweep.nc"
        parts = sweep._Parts(out)
        parts.write_eval("k", np.zeros((2, 2)))
        sweep._write_netcdf(xr.Dataset({"a": ("x", np.arange(3.0))}), out)
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == want
    # a part is readable as a plain file is, but never writable by the group or others
    # (a training part is unpickled on resume: whoever could write it could run code)
    part = parts.folder / "eval-k.npy"
    assert stat.S_IMODE(part.stat().st_mode) == want & ~0o022, oct(part.stat().st_mode)


def test_accuracy_std_is_the_sample_standard_deviation_and_says_so() -> None:
    import numpy as np
    import xarray as xr

    acc = np.array([[0.90, 0.92, 0.97], [0.5, 0.5, 0.8]])  # point x run
    ds = sweep.add_run_statistics(xr.Dataset({"accuracy": (("p", "run"), acc)}))
    np.testing.assert_allclose(ds.accuracy_std.values, acc.std(axis=1, ddof=1))
    assert "ddof=1" in ds.accuracy_std.attrs["long_name"]
    np.testing.assert_allclose(ds.accuracy_mean.values, acc.mean(axis=1))


def test_training_on_a_file_without_a_training_split_is_refused(tmp_path: Path) -> None:
    """An .npz without x_train, y_train fell back to its test set as the training data: a
    sweep (and 'pcmlab train') trained on the inputs it then scored."""
    import subprocess

    import numpy as np

    from pcmlab.errors import ConfigError
    from pcmlab.tasks import load_digits, load_npz_dataset

    d = load_digits(seed=0)
    path = tmp_path / "test-only.npz"
    np.savez(path, x_test=d.x_test.numpy()[:50], y_test=d.y_test.numpy()[:50])
    data = load_npz_dataset(path, (1, 8, 8))
    config = sweep.SweepConfig.model_validate({"axes": {"training": ["as-is", "noise"]}})
    with pytest.raises(ConfigError, match=r"training = 'noise' needs training data: .*no x_t"):
        sweep.run_sweep(config, tmp_path / "s.nc", model=nn.Linear(64, 10), data=data)
    assert not (tmp_path / "s.nc.parts").exists()
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "train", "--data", str(path),
                           "-o", str(tmp_path / "w.pt")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "x_train, y_train" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "w.pt").exists()
