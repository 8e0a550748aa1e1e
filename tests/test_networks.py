"""The example networks (residual CNN, Conv1d KWS CNN, LSTM, transformer) deployed end to
end: from Python (the example script) and from the command line (factory + weights)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pcmlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_every_example_network_deploys_from_python(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "deploy_networks.py"),
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:-1]}
    assert set(rows) == {"resnet", "kws_cnn", "lstm", "transformer"}
    for name, (weights, ideal, sim25, meas25, _sim1y, _meas1y) in rows.items():
        assert int(weights) > 2000, name
        # measured on the chip at 25 s close to the float model and to the simulation
        assert float(meas25) > float(ideal) - 5, (name, rows[name])
        assert abs(float(meas25) - float(sim25)) < 4, (name, rows[name])
    for name in rows:
        assert (tmp_path / f"{name}.h5").is_file() and (tmp_path / f"{name}.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "resnet"])
def test_a_factory_network_trains_deploys_and_evaluates_from_the_cli(name: str,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the user's own code, by name
    factory = f"examples.networks:{name}"
    method = "full" if name == "lstm" else "noise"  # noise: BatchNorm is folded at deploy
    proc = pcmlab("train", "--model", factory, "-o", "w.pt", "--epochs1", "8", "--epochs2",
                  "3", "--bits", "6", "--method", method, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the LSTM (22 464 devices) is larger than a 64 x 256 chip: a group of two takes it
    chips = ["--rows", "64", "--cols", "256", "--chips", "2"] if name == "lstm" else []
    proc = pcmlab("deploy", factory, "--weights", "w.pt", "-o", "run.h5", "--runs", "2",
                  *chips, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "on the chip" in proc.stdout and "1 y" in proc.stdout
    if name == "lstm":
        assert "2 arrays of 64 x 256" in proc.stdout
    if name == "resnet":
        assert "folded into" in proc.stdout  # the report names each folded BatchNorm
    proc = pcmlab("evaluate", "run.h5", "--model", factory, "--weights", "w.pt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # other weights for the same architecture: refused, naming both fingerprints
    proc = pcmlab("train", "--model", factory, "-o", "other.pt", "--method", "float",
                  "--epochs1", "1", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = pcmlab("evaluate", "run.h5", "--model", factory, "--weights", "other.pt",
                  cwd=tmp_path)
    assert proc.returncode == 2 and "deployed with network" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = pcmlab("deploy", factory, "-o", "x.h5", cwd=tmp_path)
    assert proc.returncode == 2 and "needs its weights" in proc.stderr
    proc = pcmlab("deploy", "examples.networks:nothing", "--weights", "w.pt", "-o", "x.h5",
                  cwd=tmp_path)
    assert proc.returncode == 2 and "has no nothing" in proc.stderr


def test_ablation_on_a_factory_network(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    proc = pcmlab("ablation", "--model", "examples.networks:kws_cnn", "--runs", "2", "--bits",
                  "6", "--epochs1", "2", "--epochs2", "1", "--output-dir", "abl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "examples.networks:kws_cnn" in proc.stdout
    table = (tmp_path / "abl" / "ablation.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        "off-the-shelf", "noise injection", "full method"]
