"""The catalog's commands: runs, runs show, tag, catalog scan/verify/info, history."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from pcmlab.cli.common import console, err_console
from pcmlab.errors import ConfigError

KILLED_STYLE = "bold red"
STATUS_STYLE = {"running": "cyan", "finished": "green", "stopped": "yellow",
                "killed": KILLED_STYLE, "resumed": "cyan", "recovered": "yellow",
                "failed": "red"}


def add_catalog_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", metavar="PATH|URL", default=argparse.SUPPRESS,
                   help="the catalog: an SQLite file or postgresql://USER@HOST/DB (default: "
                   "$PCMLAB_CATALOG, else the per-user file 'pcmlab catalog info' prints)")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("runs", help="the catalog's runs, newest first (filters; --json)")
    add_catalog_option(p)
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="one JSON object per run, a list")
    p.add_argument("--limit", type=int, help="at most this many runs")
    p.set_defaults(func=cmd_runs)
    runs_sub = p.add_subparsers(dest="runs_command", metavar="show")
    s = runs_sub.add_parser("show", help="everything recorded about a run, and its file")
    s.add_argument("run_id", help="a run id (or a unique prefix of one)")
    add_catalog_option(s)
    s.set_defaults(func=cmd_runs_show)

    p = sub.add_parser("tag", help="set metadata on a run: pcmlab tag ID key=value ...")
    p.add_argument("run_id")
    p.add_argument("tags", nargs="+", metavar="KEY=VALUE", help="a dotted key nests "
                   "(sample.batch=B7); a JSON value stays typed (n=3, ok=true) when it reads "
                   "back exactly as typed, else text (firmware=1.10 stays '1.10'; "
                   "quote to force text: n='\"3\"')")
    add_catalog_option(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("catalog", help="the catalog itself: info, scan a folder, verify")
    add_catalog_option(p)
    csub = p.add_subparsers(dest="catalog_command", metavar="info|scan|verify")
    c = csub.add_parser("info", help="where the catalog is, its schema and size")
    add_catalog_option(c)
    c.set_defaults(func=cmd_catalog_info)
    c = csub.add_parser("scan", help="register the files in a folder (idempotent; moved "
                        "files are found again, not duplicated; exit 1 naming any pcmlab "
                        "file that cannot be read)")
    c.add_argument("folder", type=Path)
    add_catalog_option(c)
    c.set_defaults(func=cmd_catalog_scan)
    c = csub.add_parser("verify", help="name registered files that are missing or changed "
                        "(exit 1 if any)")
    add_catalog_option(c)
    c.set_defaults(func=cmd_catalog_verify)
    p.set_defaults(func=cmd_catalog_info)

    p = sub.add_parser("history", help="a cell's life across runs: what each run did to it, "
                       "its reads, its cumulative pulse count")
    p.add_argument("--chip", required=True, metavar="SERIAL", help="the chip's serial (as "
                   "'pcmlab runs' shows it)")
    p.add_argument("--cells", required=True, metavar="START:STOP", help="flat cell indices, "
                   "STOP excluded (e.g. 1000:1010), or one cell")
    add_catalog_option(p)
    p.add_argument("--json", action="store_true", help="the history as JSON")
    p.set_defaults(func=cmd_history)


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chip", metavar="SERIAL", help="runs on this chip (serial)")
    p.add_argument("--kind", action="append", choices=("run", "deployment",
                   "characterization", "sweep", "check"), help="repeatable")
    p.add_argument("--status", action="append", choices=("running", "finished", "stopped",
                   "killed", "resumed", "recovered", "failed"), help="repeatable")
    p.add_argument("--since", metavar="TIME", help="started at or after (ISO 8601, UTC)")
    p.add_argument("--until", metavar="TIME", help="started at or before (ISO 8601, UTC; a date "
                   "alone, e.g. 2026-03-31, takes in that whole day)")
    p.add_argument("--tag", action="append", metavar="KEY", help="has this metadata key "
                   "(repeatable)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE", default=[],
                   help="metadata KEY equals VALUE (dotted keys; repeatable; "
                   "VALUE read as for 'pcmlab tag': 3 is a number, 1.10 is text)")


def parse_value(text: str) -> Any:
    """A JSON value (3, true, null, {"a": 1}) stays typed when it reads back exactly as
    typed; anything else (1.10, 1e3, ada) is text."""
    from pcmlab.catalog.records import parse_value as parse

    return parse(text)


def parse_pairs(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE (e.g. operator=ada)")
        out[key.strip()] = parse_value(value)
    return out


def _open(args: argparse.Namespace, *, create: bool = False):  # -> Catalog
    from pcmlab.catalog import open_catalog
    from pcmlab.catalog.registration import OFF

    where = getattr(args, "catalog", None)
    if where is not None and str(where).lower() == OFF:
        raise ConfigError("the catalog is switched off (--catalog off); give a catalog")
    # only scan makes a catalog: a mistyped path for the others is an error, not a new one
    return open_catalog(where, create=create)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    where = parse_pairs(args.where, "--where")
    return {"chip": args.chip, "kind": args.kind, "status": args.status,
            "since": args.since, "until": args.until, "tag": args.tag, "where": where,
            "limit": args.limit}


def _when(value: dt.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _status(rec: dict[str, Any]) -> str:
    status = rec["status"]
    text = f"[{STATUS_STYLE.get(status, '')}]{status}[/]"
    resumed = (rec.get("meta") or {}).get("interruptions")
    return text + (f" ({resumed} interruption{'s' * (resumed > 1)})" if resumed else "")


def _jsonable(rec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in rec.items():
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif key == "cells":
            value = [vars(c) for c in value]
        out[key] = value
    return out


def cmd_runs(args: argparse.Namespace) -> int:
    with _open(args) as cat:
        records = cat.list_runs(**_filters(args))
    if args.json:
        print(json.dumps([_jsonable(r) for r in records], indent=2, default=str))
        return 0
    table = Table(title=f"{len(records)} run(s) in {cat.location}")
    for col in ("id", "kind", "status", "started (UTC)", "chip", "readouts", "cells",
                "file", "metadata"):
        table.add_column(col, overflow="fold")
    killed = []
    for r in records:
        meta = {k: v for k, v in (r["meta"] or {}).items() if k != "interruptions"}
        table.add_row(r["run_id"][:8], r["kind"], _status(r), _when(r["started_at"]),
                      r.get("chip_serial") or "", "" if r["n_readouts"] is None
                      else str(r["n_readouts"]), "" if r["n_cells"] is None
                      else str(r["n_cells"]), r["path"],
                      json.dumps(meta, separators=(",", ":")) if meta else "")
        if r["status"] == "killed":
            killed.append(r)
    console.print(table)
    for r in killed:
        _print_plan(r)
    return 0


def _print_plan(rec: dict[str, Any]) -> None:
    console.print(f"[{KILLED_STYLE}]killed[/] {rec['run_id'][:8]} ({rec['path']}): its "
                  "writer is gone but the catalog says running")
    for what, does in _plan(rec).items():
        console.print(f"  pcmlab {what} {rec['path']}: {does}")


def _plan(rec: dict[str, Any]) -> dict[str, str]:
    path = Path(rec["path"])
    if rec["kind"] == "sweep":
        return {"sweep": f"start it again: the tasks kept in {path.name}.parts/ are not "
                "computed again"}
    if rec["kind"] == "check" or not path.exists():
        return {} if path.exists() else {"(no file)": "the file is not at its path"}
    from protocols.experiment import interrupted_run_plan

    try:
        return interrupted_run_plan(path)
    except (OSError, ConfigError, ValueError) as exc:
        return {"(file)": f"cannot be read: {exc}"}


def cmd_runs_show(args: argparse.Namespace) -> int:
    with _open(args) as cat:
        rec = cat.get(args.run_id)
    table = Table(title=f"run {rec['run_id']}", show_header=False)
    for key, value in rec.items():
        if key in ("cells", "config"):
            continue
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        table.add_row(key, _status(rec) if key == "status" else
                      ("" if value is None else str(value)))
    table.add_row("config", json.dumps(rec["config"], sort_keys=True) if rec["config"]
                  else "")
    console.print(table)
    if rec["cells"]:
        cells = Table(title="cells touched")
        for col in ("action", "cells", "SET pulses", "RESET pulses"):
            cells.add_column(col)
        for c in rec["cells"]:
            cells.add_row(c.action, f"{c.start}:{c.stop}", "" if c.n_set is None
                          else str(c.n_set), "" if c.n_reset is None else str(c.n_reset))
        console.print(cells)
    if rec["status"] == "killed":
        _print_plan(rec)
    path = Path(rec["path"])
    if not path.exists():
        err_console.print(f"[yellow]the file is not at {path}[/] ('pcmlab catalog scan "
                          "FOLDER' finds a file that moved)")
        return 0
    if rec["kind"] in ("run", "deployment", "characterization", "sweep"):
        from pcmlab.cli.runs import cmd_inspect

        return cmd_inspect(argparse.Namespace(run=path))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    tags = parse_pairs(args.tags, "tag")
    with _open(args) as cat:
        run_id = cat.resolve_id(args.run_id)
        meta = cat.tag(run_id, tags)
    console.print(f"{run_id}: {json.dumps(meta, sort_keys=True)}")
    return 0


def cmd_catalog_info(args: argparse.Namespace) -> int:
    from pcmlab.catalog import ENV_VAR, default_location

    with _open(args) as cat:
        counts = cat.count()
        table = Table(title="pcmlab catalog", show_header=False)
        table.add_row("catalog", cat.location)
        table.add_row("backend", cat.backend)
        table.add_row("schema version", str(cat.schema_version()))
        table.add_row("runs / chips / cell ranges",
                      f"{counts['runs']} / {counts['chips']} / {counts['run_cells']}")
    table.add_row("chosen by", "--catalog" if getattr(args, "catalog", None) else
                  (ENV_VAR if os.environ.get(ENV_VAR) else "the per-user default"))
    table.add_row("per-user default", default_location())
    console.print(table)
    return 0


def cmd_catalog_scan(args: argparse.Namespace) -> int:
    from pcmlab.catalog.scan import scan

    with _open(args, create=True) as cat:
        report = scan(cat, args.folder)
    for run_id, path in report.added:
        console.print(f"[green]added[/]   {run_id[:8]} {path}")
    for run_id, path in report.updated:
        console.print(f"[cyan]updated[/] {run_id[:8]} {path}")
    for run_id, path, old in report.moved:
        console.print(f"[yellow]moved[/]   {run_id[:8]} {old} -> {path}")
    for path, why in report.unreadable:
        err_console.print(f"[red]unreadable[/] {path}: {why}")
    console.print(f"{len(report.added)} added, {len(report.updated)} updated, "
                  f"{len(report.moved)} moved, {report.unchanged} unchanged, "
                  f"{len(report.skipped)} other file(s) skipped"
                  + (f", {len(report.unreadable)} pcmlab file(s) unreadable (exit 1)"
                     if report.unreadable else ""))
    return 1 if report.unreadable else 0


def cmd_catalog_verify(args: argparse.Namespace) -> int:
    from pcmlab.catalog.scan import verify

    with _open(args) as cat:
        checked, problems, elsewhere = verify(cat)
    for p in problems:
        err_console.print(f"[bold red]{p.what}[/]: {p.run_id[:8]} {p.path}")
    console.print(f"{checked} file(s) checked, {len(problems)} missing or changed, "
                  f"{elsewhere} not checked (still running, or on another host)")
    return 1 if problems else 0


def cmd_history(args: argparse.Namespace) -> int:
    import numpy as np

    from pcmlab.catalog.history import cell_history, parse_cells

    start, stop = parse_cells(args.cells)
    with _open(args) as cat:
        ds = cell_history(args.chip, (start, stop), cat)
    if args.json:
        print(json.dumps(ds.to_dict(data="list"), default=str))
        return 0
    if ds.sizes["run"] == 0:
        console.print(f"no run touched cells {start}:{stop} of chip {args.chip}")
        return 0
    for j, cell in enumerate(ds.cell.values):
        table = Table(title=f"chip {args.chip}, cell {int(cell)}")
        for col in ("run", "kind", "started (UTC)", "target µS", "verify µS", "converged",
                    "iterations", "SET", "RESET", "pulses so far", "reads", "last read µS"):
            table.add_column(col)
        for k in range(ds.sizes["run"]):
            touched = bool(ds.programmed[k, j]) or not np.isnan(float(ds.target_us[k, j]))
            if not touched:
                continue
            mine = np.flatnonzero(ds.read_run.values == k)
            g = ds.conductance_us.values[mine, j]
            g = g[~np.isnan(g)]

            def num(name: str, fmt: str = "{:.0f}", k: int = k, j: int = j) -> str:
                v = float(ds[name][k, j])
                return "" if np.isnan(v) else fmt.format(v)

            table.add_row(str(ds.run_id.values[k])[:8], str(ds.kind.values[k]),
                          str(ds.started_at.values[k])[:19].replace("T", " "),
                          num("target_us", "{:.2f}"), num("verify_us", "{:.2f}"),
                          "yes" if bool(ds.converged[k, j]) else "no", num("iterations"),
                          num("set_pulses"), num("reset_pulses"),
                          num("cumulative_pulses"), str(g.size),
                          f"{g[-1]:.2f}" if g.size else "")
        console.print(table)
    missing = [str(r)[:8] for r, ok in zip(ds.run_id.values, ds.file_found.values,
                                           strict=True) if not ok]
    if missing:
        err_console.print(f"[yellow]not read[/] (no file, or a check): {', '.join(missing)}")
    return 0
