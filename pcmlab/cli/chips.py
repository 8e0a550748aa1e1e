"""Commands about chips and drivers: drivers, check."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from pcmlab.cli.common import console, err_console, make_driver, refuse_overwrite
from pcmlab.errors import ConfigError

_STYLE = {"pass": "green", "fail": "bold red", "info": "cyan", "skip": "yellow"}


def cmd_drivers(args: argparse.Namespace) -> int:
    """List the installed drivers and what each handles."""
    from drivers.plugins import BUILT_INS, installed_plugins

    table = Table(title="chip drivers", caption="plugins register under the 'pcmlab.drivers' "
                  "entry-point group; see docs/writing-a-driver.md")
    for col in ("driver", "from", "handles", "what"):
        table.add_column(col, overflow="fold")
    for p in [*installed_plugins(), *BUILT_INS]:
        handles = p.handles() or ("TCPIP0::host::port::SOCKET, GPIB0::..., USB0::..."
                                  if p.name == "visa" else "")
        if p.name == "serial":
            handles = "/dev/..., COMn, serial:PATH, " + handles
        table.add_row(p.name, p.source or "python (register)", handles, p.description)
    console.print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run the conformance checks on a chip (or driver) inside the cells given."""
    from protocols.conformance import check_chip, parse_cells, write_report

    refuse_overwrite(args, args.json)
    driver = make_driver(args)
    try:
        info = driver.info
        cells = parse_cells(args.cells or f"0:{min(1024, info.n_cells)}", info.n_cells)
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError(f"the checks pulse cells {cells[0]}..{cells[-1]} of "
                                  f"{info.identity}; confirm with --yes (no terminal to ask)")
            answer = console.input(f"overwrite cells {cells[0]}..{cells[-1]} of "
                                   f"{info.identity}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                err_console.print("nothing done")
                return 1
    except BaseException:
        driver.close()
        raise
    results = check_chip(driver, cells, resource=getattr(args, "resource", None),
                         wire=not args.no_wire)
    table = Table(title=f"pcmlab check: {info.identity}, cells {cells[0]}..{cells[-1]}")
    for col in ("check", "result", "figure", "what it means"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.title, f"[{_STYLE[r.status]}]{r.status.upper()}[/]", r.figure,
                      r.meaning)
    console.print(table)
    failed = [r.rule for r in results if r.status == "fail"]
    if args.json is not None:
        write_report(args.json, results, info, cells, getattr(args, "resource", None))
        console.print(f"wrote {args.json}")
    if failed:
        err_console.print(f"[bold red]contract broken[/]: {', '.join(failed)}")
        return 1
    console.print("[green]the chip keeps the contract[/] (figures marked INFO are for you to "
                  "compare with the model)")
    return 0
