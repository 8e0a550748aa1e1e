"""A cell's page: its history across runs (``/cell?chip=SERIAL&cell=N``), from the
catalog's record of which runs touched it and, for each, that run's file."""

from __future__ import annotations

import html
import logging

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataTable, Div, TableColumn
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from pcmlab.dashboard.catalog import CatalogView
from pcmlab.dashboard.data import cell_event
from pcmlab.dashboard.pages.common import NAV, argument

log = logging.getLogger(__name__)


def _refuse(doc: Document, text: str) -> None:
    doc.add_root(column(Div(text=NAV), Div(text=f"<h2>{html.escape(text)}</h2>",
                                           name="not_found")))
    doc.title = "pcmlab: not found"


def cell_page(catalog: CatalogView, doc: Document) -> None:
    chip, cell_text = argument(doc, "chip"), argument(doc, "cell")
    if not chip or cell_text is None or not cell_text.isdigit():
        _refuse(doc, "a cell page needs ?chip=SERIAL&cell=N (N a flat cell index, "
                "row * cols + col)")
        return
    cell = int(cell_text)
    runs = catalog.cell_runs(chip, cell)
    if not runs:
        _refuse(doc, f"no run in the catalog touched cell {cell} of chip {chip}")
        return
    events = []
    for e in runs:
        try:
            ev = cell_event(e.id, e.kind, e.started, e.path, cell)
        except Exception as exc:  # a moved or damaged file: named on the page, not skipped
            log.warning("cell history: %s: %s", e.path, exc)
            events.append((e, None, str(exc)))
            continue
        events.append((e, ev, ""))
    set_total = reset_total = 0
    rows: dict[str, list] = {k: [] for k in ("run", "kind", "started", "target", "programmed",
                                             "converged", "iterations", "set", "reset",
                                             "set_total", "reset_total", "reads", "note")}
    fig = figure(title=f"cell {cell} of chip {chip}: reads in every run", x_axis_type="log",
                 width=900, height=400, x_axis_label="time since that run's programming (s)",
                 y_axis_label="conductance (µS)", name="cell_reads")
    for k, (e, ev, note) in enumerate(events):
        rows["run"].append(e.id[:8])
        rows["kind"].append(e.kind)
        rows["started"].append(e.started)
        if ev is None:
            for key in ("target", "programmed", "converged", "iterations", "set", "reset",
                        "set_total", "reset_total", "reads"):
                rows[key].append("")
            rows["note"].append(note or "file does not hold the cell")
            continue
        set_total += ev.set_pulses or 0
        reset_total += ev.reset_pulses or 0
        rows["target"].append(f"{ev.target_us:.3g}")
        rows["programmed"].append(f"{ev.programmed_us:.3g}")
        rows["converged"].append("yes" if ev.converged else "no")
        rows["iterations"].append(str(ev.iterations))
        rows["set"].append("" if ev.set_pulses is None else str(ev.set_pulses))
        rows["reset"].append("" if ev.reset_pulses is None else str(ev.reset_pulses))
        rows["set_total"].append(str(set_total))
        rows["reset_total"].append(str(reset_total))
        rows["reads"].append(str(ev.time_s.size))
        rows["note"].append("" if ev.set_pulses is not None else "pulse counts not recorded")
        if ev.time_s.size:
            t = np.maximum(ev.time_s, 1e-3)
            color = Category10_10[k % 10]
            fig.line(t, ev.g_us, line_color=color)
            fig.scatter(t, ev.g_us, color=color, size=6, legend_label=f"{e.id[:8]} ({e.kind})")
    table = DataTable(source=ColumnDataSource(rows, name="cell_source"), columns=[
        TableColumn(field=f, title=t) for f, t in (
            ("run", "run"), ("kind", "kind"), ("started", "started (UTC)"),
            ("target", "target µS"), ("programmed", "verify µS"), ("converged", "converged"),
            ("iterations", "iterations"), ("set", "SET"), ("reset", "RESET"),
            ("set_total", "SET so far"), ("reset_total", "RESET so far"), ("reads", "reads"),
            ("note", ""))], width=1300, height=300, index_position=None, name="cell_table")
    doc.add_root(column(Div(text=f"{NAV} &nbsp; <b>cell {cell}</b> of chip "
                            f"{html.escape(chip)}: {len(runs)} run(s), oldest first"),
                        table, fig))
    doc.title = f"pcmlab cell {cell}"
