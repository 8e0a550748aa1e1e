"""The docs' pages as a new user follows them: docs/networks.md's Python (a network of
one's own deployed in chip mode) and docs/first-day.md, every step, with what it prints."""

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_python_api import python_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_the_networks_page_deploys_a_network_of_ones_own_in_chip_mode(tmp_path: Path
                                                                      ) -> None:
    code = "\n".join(python_blocks(ROOT / "docs" / "networks.md"))
    assert "chip_in_the_loop=True" in code and "load_digits" in code
    assert "ranges=trained.ranges" in code  # the trained periphery applied
    script = tmp_path / "networks.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "bn     BatchNorm2d  folded   folded into conv" in out
    rows = [line for line in out.splitlines() if "recalibrated" in line]
    assert len(rows) == 4  # chip mode at every readout, 20 s to a year
    float_pct = float(out.split("float ")[1].split(" %")[0])
    assert float_pct > 80
    # at a year the calibrated chip is close to the float model, the uncorrected one not
    last = rows[-1].split()
    assert float(last[last.index("recalibrated") + 1]) > float_pct - 10
    assert (tmp_path / "mine.h5").is_file()


BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
FILE_BLOCK = re.compile(r"# ([\w.-]+\.(?:py|toml))\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def masked(text: str) -> list[str]:
    """Lines with numbers as '#', runs of table rule characters and blanks as one: what a
    step prints, its numbers aside."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", line)
        line = re.sub(r"([━─═]){2,}", r"\1", line)
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            out.append(line)
    return out


def run_page(page: Path, folder: Path) -> list[tuple[str, str, str | None]]:
    """Every step of a docs page, in order, in ``folder``: blocks whose first line is
    ``# NAME.py`` or ``# NAME.toml`` are files to write; other python blocks are run as
    scripts, bash blocks line by line (``pcmlab ...``; a line ending in ``&`` is a server
    left running until the page ends); a text block after a step is what it prints.
    Returns (step, what it printed, what the page shows)."""
    port = str(_free_port())
    blocks = BLOCK.findall(page.read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    steps: list[tuple[str, str, str | None]] = []
    servers: list[subprocess.Popen] = []
    try:
        for i, (lang, body) in enumerate(blocks):
            body = body.replace("5025", port)
            shown = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" \
                else None
            named = FILE_BLOCK.match(body)
            if named and lang in ("python", "toml"):
                (folder / named.group(1)).write_text(body)
                continue
            if lang == "python":
                script = folder / f"step{i}.py"
                script.write_text(body)
                proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                                      text=True, timeout=600, cwd=folder, env=env)
                assert proc.returncode == 0, (body, proc.stderr)
                steps.append((body, proc.stdout, shown))
            elif lang == "bash":
                printed = ""
                for line in body.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    argv = shlex.split(line.rstrip(" &"))
                    assert argv[0] == "pcmlab", line
                    argv = [sys.executable, "-m", "pcmlab.cli", *argv[1:]]
                    if line.rstrip().endswith("&"):
                        server = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True,
                                                  cwd=folder, env=env)
                        servers.append(server)
                        assert "serving on" in server.stdout.readline()
                        continue
                    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                          cwd=folder, env=env)
                    assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
                    printed += proc.stdout
                steps.append((body, printed, shown))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    return steps


@pytest.mark.slow
def test_the_first_day_page_runs_step_by_step_and_prints_what_it_shows(tmp_path: Path
                                                                       ) -> None:
    steps = run_page(ROOT / "docs" / "first-day.md", tmp_path)
    assert len(steps) == 8
    for body, printed, shown in steps:
        assert shown is not None, f"the page shows nothing of what this prints:\n{body}"
        got = masked(printed)
        for line in masked(shown):
            if line == "...":
                continue
            assert line in got, f"{body}\nshows {line!r}; it printed:\n{printed}"
    assert (tmp_path / "mynet.h5").is_file() and (tmp_path / "mysweep.nc").is_file()
