"""Commands about simulation sweeps: sweep, and inspect / plot of a sweep result."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pcmlab.cli.common import console, err_console, refuse_overwrite
from pcmlab.errors import ConfigError


@contextmanager
def task_progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A live bar of done / total tasks with the time left (rich): the sweep's progress."""
    with Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("tasks"), TimeElapsedColumn(), TextColumn("left"),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _refuse_another_sweep(args: argparse.Namespace, config) -> None:
    """An existing result of another sweep is not replaced without --force (the same
    sweep is rebuilt from its finished tasks, with the same numbers)."""
    from pcmlab.sweep import sweep_attrs

    out = args.output
    if getattr(args, "force", False) or not out.exists():
        return
    attrs = sweep_attrs(out)
    if attrs is None:
        refuse_overwrite(args, out)
    theirs = json.loads(attrs.get("sweep_json", "{}"))
    if theirs != config.model_dump(mode="json"):
        raise ConfigError(f"{out} holds the result of another sweep; choose another -o, or "
                          "pass --force to replace it")


def cmd_sweep(args: argparse.Namespace) -> int:
    from pcmlab.sweep import load_sweep, run_sweep

    config = load_sweep(args.sweep)
    if args.workers is not None and args.scheduler is not None:
        raise ConfigError("give --workers (a local cluster) or --scheduler (a running "
                          "one), not both")
    _refuse_another_sweep(args, config)
    t_start = time.perf_counter()
    with task_progress("sweep") as progress:
        outcome = run_sweep(config, args.output, base=args.sweep.parent,
                            workers=args.workers, scheduler=args.scheduler,
                            progress=progress, sweep_text=args.sweep.read_text("utf-8"))
    where = (f"the cluster at {args.scheduler}" if args.scheduler else
             f"{args.workers} local workers" if args.workers else "this process")
    console.print(f"{outcome.evaluations} evaluation tasks: {outcome.kept} kept from an "
                  f"earlier start, {outcome.computed} computed (and {outcome.trainings} "
                  f"trainings) on {where} in {time.perf_counter() - t_start:.1f} s")
    console.print(sweep_table(outcome.dataset, f"{args.sweep.name}: test accuracy %"))
    console.print(f"wrote [bold]{args.output}[/] (finished tasks in "
                  f"{args.output.name}.parts/)")
    return 0


def sweep_table(ds, title: str) -> Table:
    """One row per grid point, mean ± std over runs per time."""
    from pcmlab.sweep import grid_rows

    table = Table(title=title, caption=f"{ds.sizes['run']} runs per point; mean ± std "
                  "over runs (sample std, ddof=1)")
    names = [d for d in ds.accuracy.dims if d not in ("run", "time")]
    for n in names:
        table.add_column(n, justify="left")
    for label in ds.time_label.values.tolist():
        table.add_column(str(label), justify="right")
    for where, mean, std in grid_rows(ds):
        table.add_row(*[str(where[n]) for n in names],
                      *[f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(mean, std,
                                                                          strict=True)])
    return table


def inspect_sweep(path: Path) -> int:
    from pcmlab.sweep import open_sweep

    ds = open_sweep(path)
    console.print(f"sweep {path}: pcmlab {ds.attrs.get('pcmlab_version')}, created "
                  f"{ds.attrs.get('created')}, seed {ds.attrs.get('seed')}; axes "
                  + ", ".join(f"{d} ({ds.sizes[d]})" for d in ds.accuracy.dims
                              if d not in ("run", "time")), highlight=False)
    console.print(sweep_table(ds, "test accuracy %"))
    return 0


def plot_sweep_file(path: Path, output: Path | None, curves: str | None,
                    args: argparse.Namespace) -> int:
    from pcmlab.plots import check_figure_path, plot_sweep
    from pcmlab.sweep import open_sweep

    out = output or path.with_suffix(".png")
    if output is not None:
        check_figure_path(output)
    refuse_overwrite(args, out)
    plot_sweep(out, open_sweep(path), curves, title=path.name)
    console.print(f"wrote [bold]{out}[/]")
    return 0
