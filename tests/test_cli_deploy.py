"""``pcmlab deploy`` and its chips from the command line: chip mode (--mvm) locally and
over TCP, a group of chips from one chip file, a stopped deployment resumed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pcmlab.cli import build_parser
from pcmlab.cli.common import make_driver


def test_a_group_of_chips_from_one_chip_file_takes_successive_seeds(tmp_path: Path) -> None:
    chip_file = tmp_path / "chip.toml"
    chip_file.write_text("seed = 7\n[geometry]\nrows = 16\ncols = 16\n")
    args = build_parser().parse_args(["program", "--chips", "2", "--chip", str(chip_file)])
    group = make_driver(args)
    with group:
        first, second = (d.chip for d in group.drivers)
        print("seeds", first.config.seed, second.config.seed)
        assert (first.config.seed, second.config.seed) == (7, 8)
        # independent chips: other devices (saturation conductances, thresholds)
        assert not np.array_equal(first.devices.g_sat_us, second.devices.g_sat_us)
        assert first.identity != second.identity


ROOT = Path(__file__).resolve().parent.parent


def pcmlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def small_resnet(tmp_path: Path) -> tuple[str, Path]:
    """examples.networks:resnet (residual blocks: not Sequential), briefly trained, and a
    small digits split, in tmp_path: (factory, data file)."""
    from examples.networks import resnet
    from pcmlab.tasks import load_digits, train_classifier

    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the user's own code, by name
    d = load_digits(seed=0, input_shape=(1, 8, 8))
    model = train_classifier(resnet(), d.x_train[:256], d.y_train[:256], epochs=2, seed=0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    # few samples: chip mode runs them through the chip (and calibrates) at 13 readouts
    np.savez(tmp_path / "d.npz", x_train=d.x_train[:16].numpy(), y_train=d.y_train[:16].numpy(),
             x_test=d.x_test[:16].numpy(), y_test=d.y_test[:16].numpy())
    return "examples.networks:resnet", tmp_path / "d.npz"


@contextmanager
def mock_server(*options: str) -> Iterator[str]:
    """``pcmlab mock-server --tcp 127.0.0.1:0`` in a process of its own: its resource."""
    proc = subprocess.Popen([sys.executable, "-m", "pcmlab.cli", "mock-server", "--tcp",
                             "127.0.0.1:0", *options], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"serving on (\S+)", line)
        assert match, line
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_deploy_mvm_records_chip_mode_over_tcp_and_refuses_a_chip_without_mvm(
        tmp_path: Path) -> None:
    factory, data = small_resnet(tmp_path)
    # the residual blocks kept digital (lean: the stem and the head go on the chip); the
    # network's own forward, with its skip connections, runs around them
    common = (factory, "--weights", "w.pt", "--data", str(data), "--runs", "1",
              "--keep-digital", "blocks.*")
    with mock_server("--rows", "256", "--cols", "512", "--seed", "3") as resource:
        proc = pcmlab("deploy", *common, "-o", "run.h5", "--mvm", "--resource", resource,
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "chip mode: the test set through the chip's MVM" in proc.stdout
    with h5py.File(tmp_path / "run.h5", "r") as f:
        ev = f["evaluation"]
        chip = sorted(k for k in ev if k.startswith("chip_"))
        print("/evaluation:", sorted(ev))
        n = ev["measured_time_s"].shape[0]
        assert chip == ["chip_calibrated_once", "chip_drift_compensated",
                        "chip_recalibrated", "chip_time_s", "chip_uncorrected"]
        assert n == 13 and all(ev[k].shape == (n,) for k in chip)
        assert all(np.isfinite(ev[k][...]).all() for k in chip)
        # chip mode runs after its readout, once the chip's drift reference and
        # calibration are done: its recorded times say so
        lag = ev["chip_time_s"][...] - ev["measured_time_s"][...]
        assert (lag > 0).all() and (lag < 600).all(), lag
    # a chip without MVM: one line naming it, before any work
    (tmp_path / "nomvm.toml").write_text("[geometry]\nrows = 256\ncols = 512\n"
                                         "[mvm]\nenabled = false\n")
    proc = pcmlab("deploy", *common, "-o", "x.h5", "--mvm", "--chip", "nomvm.toml",
                  cwd=tmp_path)
    print("refusal:", proc.stderr.strip())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert "--mvm: the chip pcmlab,MockPCM-256x512,0," in message
    assert "has no MVM capability" in message
    assert not (tmp_path / "x.h5").exists()


def test_a_deploy_stopped_after_two_readouts_resumes_to_the_uninterrupted_result(
        tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C after two readouts, then 'pcmlab resume': the file's evaluation covers every
    readout and equals that of a deployment that was never stopped (same seeds)."""
    import os

    import pcmlab.cli.network as network
    from pcmlab.cli import main
    from pcmlab.cli.common import readout_progress
    from pcmlab.nn_model import save_model_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    save_model_file(model, tmp_path / "m.pt", input_shape=(64,))
    deploy = ["deploy", str(tmp_path / "m.pt"), "--rows", "64", "--cols", "64", "--seed", "2",
              "--runs", "2"]

    @contextmanager
    def ctrl_c_before_the_third_readout(n: int):
        with readout_progress(n) as (bar, on_wait):
            def wait(i: int, t_s: float, chip_now: float) -> None:
                if i == 2:
                    os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does
                on_wait(i, t_s, chip_now)
            yield bar, wait

    with monkeypatch.context() as m:
        m.setattr(network, "readout_progress", ctrl_c_before_the_third_readout)
        assert main([*deploy, "-o", str(tmp_path / "stopped.h5")]) == 130
    with h5py.File(tmp_path / "stopped.h5", "r") as f:
        print("stopped: readouts", f["readouts/time_s"].shape[0], "evaluated",
              f["evaluation/measured_accuracy"].shape[0])
        assert f["readouts/time_s"].shape[0] == 2
    assert main(["resume", str(tmp_path / "stopped.h5")]) == 0
    assert main([*deploy, "-o", str(tmp_path / "whole.h5")]) == 0
    with h5py.File(tmp_path / "stopped.h5", "r") as a, h5py.File(tmp_path / "whole.h5",
                                                                  "r") as b:
        print("resumed:", a["evaluation/measured_accuracy"][...])
        print("whole:  ", b["evaluation/measured_accuracy"][...])
        assert a["readouts/time_s"].shape[0] == b["readouts/time_s"].shape[0] == 13
        np.testing.assert_array_equal(a["readouts/conductance_us"][...],
                                      b["readouts/conductance_us"][...])
        assert sorted(a["evaluation"]) == sorted(b["evaluation"])
        for name in b["evaluation"]:
            np.testing.assert_array_equal(a["evaluation"][name][...],
                                          b["evaluation"][name][...], err_msg=name)
        assert a["evaluation"].attrs["schedule_complete"] == 1


@pytest.mark.slow
def test_evaluate_uses_the_bits_the_deployment_used(tmp_path: Path) -> None:
    """A deployment at --bits 4 was evaluated by 'pcmlab evaluate' at the model's 8 bits
    (about 5 points higher, printed as the file's measured accuracy)."""
    model, run = tmp_path / "m.pt", tmp_path / "d4.h5"
    for args in (["train", "-o", str(model), "--method", "float", "--epochs1", "3"],
                 ["deploy", str(model), "-o", str(run), "--bits", "4", "--runs", "1",
                  "--rows", "128", "--cols", "256"]):
        proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", *args],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pcmlab.cli", "evaluate", str(run),
                           "--model", str(model)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(run, "r") as f:
        stored = f["evaluation/measured_accuracy"][()]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    printed = [float(line.split("│")[2]) for line in rows]
    np.testing.assert_allclose(printed, 100 * stored, atol=0.006)
