"""A deployment's page: accuracy vs time (measured beside simulated and chip mode), which
layers are on which array, and how full each array is."""

from __future__ import annotations

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataTable, Div, Span, TableColumn
from bokeh.plotting import figure

from pcmlab.dashboard.catalog import CatalogView
from pcmlab.dashboard.data import CHIP_CURVES, RunData, array_fill, layer_rows
from pcmlab.dashboard.pages.common import entry_of, header
from pcmlab.store import schema as S


def accuracy_figure(ev: dict | None):  # -> bokeh figure
    fig = figure(title="accuracy vs time since programming", x_axis_type="log", width=800,
                 height=450, x_axis_label="time since programming (s)",
                 y_axis_label="accuracy (%)", name="accuracy")
    if ev is None:
        fig.title.text = "no evaluation in this file yet (it is written after the run)"
        return fig
    if S.SIMULATED_TIME in ev and S.SIMULATED_MEAN in ev:
        t = np.asarray(ev[S.SIMULATED_TIME], dtype=float)
        mean = 100 * np.asarray(ev[S.SIMULATED_MEAN], dtype=float)
        std = 100 * np.asarray(ev.get(S.SIMULATED_STD, np.zeros_like(mean)), dtype=float)
        fig.varea(x=t, y1=mean - std, y2=mean + std, fill_alpha=0.25, fill_color="#1f77b4",
                  legend_label="simulated (PCM model), mean ± std")
        fig.line(t, mean, line_color="#1f77b4")
    if S.MEASURED_TIME in ev:
        measured = ColumnDataSource({
            "time_s": np.asarray(ev[S.MEASURED_TIME], dtype=float),
            "accuracy_pct": 100 * np.asarray(ev[S.MEASURED_ACCURACY], dtype=float)},
            name="measured_source")
        fig.scatter("time_s", "accuracy_pct", source=measured, size=8, color="firebrick",
                    legend_label="measured (reads)")
    if "chip_time_s" in ev:
        t = np.asarray(ev["chip_time_s"], dtype=float)
        for k, (name, label) in enumerate(CHIP_CURVES):
            if name in ev:
                fig.line(t, 100 * np.asarray(ev[name], dtype=float), line_color="#2ca02c",
                         line_dash=("dotted", "dashed", "dotdash", "solid")[k],
                         line_width=2, legend_label=label)
    if S.ATTR_IDEAL in ev:
        fig.add_layout(Span(location=100 * float(ev[S.ATTR_IDEAL]), dimension="width",
                            line_color="gray", line_dash="dashed"))
        fig.title.text += f" (float model {100 * float(ev[S.ATTR_IDEAL]):.1f} %, dashed)"
    if fig.legend:
        fig.legend.location = "bottom_left"
        fig.legend.click_policy = "hide"
    return fig


def deployment_page(catalog: CatalogView, doc: Document) -> None:
    entry = entry_of(doc, catalog, ("deployment",))
    if entry is None:
        return
    data = RunData(entry.path)
    try:
        acc = accuracy_figure(data.evaluation())
        mapping = data.network_mapping() or {}
        layers = layer_rows(mapping)
        table = DataTable(
            source=ColumnDataSource({k: [r[k] for r in layers] for k in
                                     ("index", "name", "kind", "weight_shape", "tiles",
                                      "arrays")}),
            columns=[TableColumn(field=f, title=t) for f, t in
                     (("index", "layer"), ("name", "module"), ("kind", "kind"),
                      ("weight_shape", "weight shape"), ("tiles", "tiles"),
                      ("arrays", "on arrays (chips)"))],
            width=700, height=300, index_position=None, name="layers_table")
        fill = array_fill(data.cell, data.geometry)
        fill_fig = figure(title="array fill: cells the network holds", width=500, height=300,
                          x_range=[str(f.array) for f in fill], y_axis_label="filled (%)",
                          x_axis_label="array (chip)", name="array_fill", tools="hover",
                          tooltips=[("cells", "@used of @total")])
        fill_fig.vbar(x="array", top="pct", width=0.7, source=ColumnDataSource({
            "array": [str(f.array) for f in fill], "pct": [100 * f.fraction for f in fill],
            "used": [f.cells_used for f in fill], "total": [f.cells_total for f in fill]}))
    finally:
        data.close()
    doc.add_root(column(header(entry, f'&middot; <a href="/run?id={entry.id}">array and '
                               "drift</a>"), acc, Div(text="<b>layers on the chip</b>"),
                        row(table, fill_fig)))
    doc.title = f"pcmlab deployment {entry.id}"
