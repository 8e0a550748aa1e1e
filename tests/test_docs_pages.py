"""The docs' pages as a new user follows them: docs/networks.md's Python (a network of
one's own deployed in chip mode)."""

import subprocess
import sys
from pathlib import Path

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

