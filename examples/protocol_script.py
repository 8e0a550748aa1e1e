"""A first protocol script: program a 64 x 64 block to eight levels with program-and-
verify, read it back at 10 log-spaced times over a day, save everything into an HDF5 file,
and analyze that file as an xarray Dataset.

    python examples/protocol_script.py -o first.h5
    python examples/protocol_script.py -o first.h5 --resource TCPIP0::127.0.0.1::5025::SOCKET

It uses only the documented API (docs/python-api.md). The equivalent command line is
``pcmlab run examples/protocol_script.toml -o first.h5``: the tests check that both give
the same numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import pcmlab

LEVELS_US = [0.0, 2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("first.h5"))
    parser.add_argument("--resource", default="mock://?rows=64&cols=64&seed=1",
                        help="the chip (default: an in-process mock chip)")
    args = parser.parse_args(argv)

    # the run: which cells, programmed how, read when (validated here, as a TOML file is)
    cells = np.arange(64 * 64)
    target_us = np.asarray(LEVELS_US)[cells % len(LEVELS_US)]
    config = pcmlab.RunConfig(
        program=pcmlab.ProgramVerifyConfig(tolerance_abs_us=0.5, tolerance_rel=0.04),
        schedule=pcmlab.ReadoutSchedule(t0_s=20.0, t_end_s=86400.0, n_readouts=10),
    )
    with pcmlab.open_driver(args.resource) as driver:
        outcome = pcmlab.measure_run(driver, config, args.output, cells=cells,
                                     target_us=target_us)
    print(f"{100 * outcome.programming.converged_fraction_nonzero:.2f} % of non-zero cells "
          f"converged; {outcome.readouts_taken} readouts in {args.output}")

    # the analysis: the file as a dataset, the tables as functions of it
    ds = pcmlab.open_run(args.output)
    print(pcmlab.level_convergence(ds)[["cells", "converged_fraction", "error_std_us",
                                        "sigma_prog_us"]].to_dataframe())
    print(pcmlab.level_drift(ds)[["nu_mean", "model_nu_mean"]].to_dataframe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
