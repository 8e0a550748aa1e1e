"""``pcmlab deploy`` and its chips from the command line: chip mode (--mvm) locally and
over TCP, a group of chips from one chip file, a stopped deployment resumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
