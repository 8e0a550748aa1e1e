"""What a new user tripped over on the first day (issue 22): the demo keeps earlier
results, a factory's trained weights load back into the user's own model, evaluate shows
the simulated column it has, and the demo figure shows every curve of its tables."""

import contextlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import pcmlab.plots
from pcmlab.cli import main
from pcmlab.store import RunReader

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcmlab.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_the_demo_refuses_to_replace_earlier_results(tmp_path: Path) -> None:
    out = tmp_path / "pcmlab-demo"
    out.mkdir()
    earlier = out / "demo-run.h5"
    earlier.write_bytes(b"an earlier demo's measurements")
    proc = cli("demo", "--output-dir", str(out), "--epochs", "1", "--runs", "1",
                  cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{earlier} exists" in proc.stderr and "--force" in proc.stderr
    assert "--output-dir" in proc.stderr
    assert earlier.read_bytes() == b"an earlier demo's measurements"
    assert sorted(p.name for p in out.iterdir()) == ["demo-run.h5"]  # nothing trained


@dataclass
class Demo:
    out: Path
    stdout: str
    figures: list


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    """A small demo run in this process over an earlier result, with --force; the figure
    it saves is kept (matplotlib objects) to be looked at."""
    out = tmp_path_factory.mktemp("demo")
    (out / "demo-accuracy.png").write_bytes(b"an earlier figure")
    figures = []
    real_save = pcmlab.plots._save

    def keep(fig, path):
        figures.append(fig)
        return real_save(fig, path)

    text = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(text):
        mp.setattr(pcmlab.plots, "_save", keep)
        code = main(["demo", "--output-dir", str(out), "--epochs", "3", "--runs", "2",
                     "--force"])
    assert code == 0, text.getvalue()
    return Demo(out, text.getvalue(), figures)


@pytest.mark.slow
def test_the_demo_with_force_replaces_its_results(demo: Demo) -> None:
    assert "measured %" in demo.stdout and "1 y" in demo.stdout
    assert "float model (ideal)" in demo.stdout
    assert (demo.out / "demo-accuracy.png").read_bytes()[:4] == b"\x89PNG"
    with RunReader(demo.out / "demo-run.h5") as run:
        assert run.n_readouts > 0


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() is not None
            for t in ax.get_legend().get_texts()]


@pytest.mark.slow
def test_the_demo_figure_shows_every_curve_of_its_tables(demo: Demo) -> None:
    """Looked at as a person would: every column of the two tables is a legend entry,
    every curve lies inside the axis it is drawn on, the main axis spans where the
    curves are (not 25-100 %), and the time axis starts at the first read, 20 s."""
    (fig,) = demo.figures
    for column in ("measured %", "simulated %", "chip %", "+ GDC %", "calibrated once %",
                   "recalibrated %", "float model"):
        assert column in demo.stdout  # the tables have it, so the figure must
    legend = _legend_texts(fig)
    for entry in ("measured (reads)", "simulated (PCM model), mean ± std",
                  "chip MVM, uncorrected", "chip MVM + GDC", "chip MVM, calibrated once",
                  "chip MVM, recalibrated", "float model"):
        assert entry in legend, legend
    with RunReader(demo.out / "demo-run.h5") as run:
        ev = run.evaluation()
    first_read_s = float(ev["measured_time_s"][0])
    assert first_read_s == pytest.approx(20.0, abs=1.0)
    main_ax = fig.axes[0]
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        t_lo, t_hi = ax.get_xlim()
        assert t_lo <= first_read_s < 1.2 * t_lo  # the axis starts at the first read
        assert ax.get_xticklabels()[0].get_text() == "20 s"
        for line in ax.get_lines():
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            assert lo <= np.nanmin(y) and np.nanmax(y) <= hi, (line.get_label(), lo, hi)
            if x.tolist() != [0.0, 1.0]:  # an axhline's x is in axes coordinates
                assert t_lo <= x.min() and x.max() <= t_hi, line.get_label()
        for band in ax.collections:  # the simulated mean ± std
            for path in band.get_paths():
                y = path.vertices[:, 1]
                assert lo <= y.min() and y.max() <= hi, (band.get_label(), lo, hi)
    # the main axis spans the curves drawn on it, with a margin, not 25-100 %
    on_main = np.concatenate([np.asarray(line.get_ydata(), float)
                              for line in main_ax.get_lines()])
    lo, hi = main_ax.get_ylim()
    spread = np.nanmax(on_main) - np.nanmin(on_main)
    assert hi - lo <= 1.5 * spread + 2.0, (lo, hi, spread)
    # the uncorrected chip outputs fall far below the rest after drift: a panel of their
    # own, which spans them whole
    uncorrected = 100 * ev["chip_uncorrected"]
    if uncorrected.min() < lo:
        assert len(fig.axes) == 2
        assert "chip MVM, uncorrected" in [t.get_text() for t in
                                           fig.axes[1].get_legend().get_texts()]


@pytest.mark.slow
def test_evaluate_prints_the_simulated_column_the_file_holds(demo: Demo) -> None:
    proc = cli("evaluate", "demo-run.h5", "--model", "demo-model.pt", cwd=demo.out)
    assert proc.returncode == 0, proc.stderr
    with RunReader(demo.out / "demo-run.h5") as run:
        ev = run.evaluation()
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^│\s+[\d.]+ \w+ │", line)]
    assert len(rows) == ev["measured_time_s"].size
    simulated = [float(r.split("│")[3]) for r in rows]
    std = [float(r.split("│")[4]) for r in rows]
    sim_t = ev["simulated_time_s"]
    nearest = [int(np.argmin(np.abs(np.log(sim_t) - np.log(t))))
               for t in ev["measured_time_s"]]
    np.testing.assert_allclose(simulated, 100 * ev["simulated_accuracy_mean"][nearest],
                               atol=0.006)
    np.testing.assert_allclose(std, 100 * ev["simulated_accuracy_std"][nearest], atol=0.006)
    # another periphery is another simulation: not shown as if it were this one
    proc = cli("evaluate", "demo-run.h5", "--model", "demo-model.pt", "--bits", "6",
                  cwd=demo.out)
    assert proc.returncode == 0 and "another periphery; not shown" in proc.stdout


@pytest.mark.slow
def test_weights_trained_from_a_factory_load_into_the_users_own_model(tmp_path: Path) -> None:
    """pcmlab train --model pkg:factory (the full method, which folds BatchNorm in stage
    2) saves a state dict that the user's own model loads with load_state_dict, computing
    what was trained; the deploy from it lists every BatchNorm, as folded."""
    import torch

    from examples.networks import resnet
    from pcmlab.tasks import load_digits

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    factory = "examples.networks:resnet"
    proc = cli("train", "--model", factory, "-o", "w.pt", "--epochs1", "2", "--epochs2",
                  "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trained_pct = float(re.search(r"float test accuracy ([\d.]+) %", proc.stdout).group(1))
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    mine = resnet()
    mine.load_state_dict(saved["state_dict"])  # strict: every key, BatchNorm's included
    data = load_digits(seed=0, input_shape=(1, 8, 8))
    with torch.no_grad():
        pct = 100 * float((mine.eval()(data.x_test).argmax(1) == data.y_test).float().mean())
    assert pct == pytest.approx(trained_pct, abs=0.006)  # the trained network, reloaded
    assert saved["extra"]["batchnorm_folded_in_training"]  # and the file says what it did
    proc = cli("deploy", factory, "--weights", "w.pt", "-o", "run.h5", "--runs", "1",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bns = [n for n, m in mine.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for name in bns:  # every layer in the table, BatchNorm as folded
        assert re.search(rf"│ {re.escape(name)}\s+│ BatchNorm2d\s+│ folded", proc.stdout), name
