"""A cell's page: its history across runs (``/cell?chip=SERIAL&cell=N``), as
``pcmlab.cell_history`` assembles it from the catalog and the runs' files."""

from __future__ import annotations

import html

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataTable, Div, TableColumn
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from pcmlab.dashboard.catalog import CatalogView
from pcmlab.dashboard.pages.common import NAV, argument
from pcmlab.errors import CatalogError


def _refuse(doc: Document, text: str) -> None:
    doc.add_root(column(Div(text=NAV), Div(text=f"<h2>{html.escape(text)}</h2>",
                                           name="not_found")))
    doc.title = "pcmlab: not found"


def _num(x: float, fmt: str = "{:.3g}") -> str:
    return "" if not np.isfinite(x) else fmt.format(x)


def history_rows(ds) -> dict[str, list[str]]:
    """One table row per run of a one-cell history."""
    rows: dict[str, list[str]] = {k: [] for k in (
        "run", "kind", "started", "target", "verify", "converged", "iterations", "set",
        "reset", "pulses_so_far", "reads", "note")}
    for k in range(ds.sizes["run"]):
        one = ds.isel(run=k, cell=0)
        rows["run"].append(str(one.run_id.values)[:8])
        rows["kind"].append(str(one.kind.values))
        rows["started"].append(str(one.started_at.values)[:19])
        rows["target"].append(_num(float(one.target_us)))
        rows["verify"].append(_num(float(one.verify_us)))
        rows["converged"].append(("yes" if bool(one.converged) else "no")
                                 if bool(one.programmed) else "")
        rows["iterations"].append(_num(float(one.iterations), "{:.0f}"))
        rows["set"].append(_num(float(one.set_pulses), "{:.0f}"))
        rows["reset"].append(_num(float(one.reset_pulses), "{:.0f}"))
        rows["pulses_so_far"].append(_num(float(one.cumulative_pulses), "{:.0f}"))
        rows["reads"].append(str(int((ds.read_run.values == k).sum())))
        rows["note"].append("" if bool(one.file_found) else "file not found or unreadable")
    return rows


def cell_page(catalog: CatalogView, doc: Document) -> None:
    chip, cell_text = argument(doc, "chip"), argument(doc, "cell")
    if not chip or cell_text is None or not cell_text.isdigit():
        _refuse(doc, "a cell page needs ?chip=SERIAL&cell=N (N a flat cell index, "
                "row * cols + col)")
        return
    cell = int(cell_text)
    try:
        ds = catalog.cell_history(chip, cell)
    except CatalogError as exc:
        _refuse(doc, str(exc))
        return
    if ds.sizes["run"] == 0:
        _refuse(doc, f"no run in the catalog touched cell {cell} of chip {chip}")
        return
    table = DataTable(source=ColumnDataSource(history_rows(ds), name="cell_source"),
                      columns=[TableColumn(field=f, title=t) for f, t in (
                          ("run", "run"), ("kind", "kind"), ("started", "started (UTC)"),
                          ("target", "target µS"), ("verify", "verify µS"),
                          ("converged", "converged"), ("iterations", "iterations"),
                          ("set", "SET"), ("reset", "RESET"),
                          ("pulses_so_far", "pulses so far"), ("reads", "reads"),
                          ("note", ""))],
                      width=1300, height=300, index_position=None, name="cell_table")
    fig = figure(title=f"cell {cell} of chip {chip}: its reads in every run",
                 x_axis_type="log", width=900, height=400,
                 x_axis_label="time since that run's programming (s)",
                 y_axis_label="conductance (µS)", name="cell_reads")
    for k in range(ds.sizes["run"]):
        sel = ds.read_run.values == k
        if sel.any():
            t = np.maximum(ds.read_time_s.values[sel], 1e-3)
            g = ds.conductance_us.values[sel, 0]
            color = Category10_10[k % 10]
            fig.line(t, g, line_color=color)
            fig.scatter(t, g, color=color, size=6,
                        legend_label=f"{str(ds.run_id.values[k])[:8]} ({ds.kind.values[k]})")
    doc.add_root(column(Div(text=f"{NAV} &nbsp; <b>cell {cell}</b> of chip "
                            f"{html.escape(chip)}: {ds.sizes['run']} run(s), oldest first"),
                        table, fig))
    doc.title = f"pcmlab cell {cell}"
