"""A sweep's page: accuracy vs time, one curve per value of a chosen axis, the other axes
fixed to values picked on the page."""

from __future__ import annotations

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Select
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from pcmlab.dashboard.catalog import CatalogView
from pcmlab.dashboard.pages.common import entry_of, header
from pcmlab.sweep import open_sweep


def sweep_curves(ds, curve_axis: str | None, fixed: dict[str, str]) -> dict[str, list]:
    """Per value of ``curve_axis`` (the others at ``fixed``, values as text): time, mean
    and mean ± std of accuracy in %, as multi_line / patches columns."""
    axes = [d for d in ds.accuracy_mean.dims if d != "time"]
    sel = {}
    for a in axes:
        if a == curve_axis:
            continue
        values = [str(v) for v in ds[a].values.tolist()]
        sel[a] = ds[a].values[values.index(fixed[a])]
    sub = ds.sel(sel) if sel else ds
    t = np.asarray(ds.time_s.values, dtype=float)
    out = {"xs": [], "ys": [], "band_xs": [], "band_ys": [], "label": [], "color": []}
    values = sub[curve_axis].values.tolist() if curve_axis else [None]
    for k, v in enumerate(values):
        one = sub.sel({curve_axis: v}) if curve_axis else sub
        mean = 100 * np.asarray(one.accuracy_mean.values, dtype=float)
        std = 100 * np.asarray(one.accuracy_std.values, dtype=float)
        out["xs"].append(t.tolist())
        out["ys"].append(mean.tolist())
        out["band_xs"].append(np.concatenate([t, t[::-1]]).tolist())
        out["band_ys"].append(np.concatenate([mean - std, (mean + std)[::-1]]).tolist())
        out["label"].append(f"{curve_axis} = {v}" if curve_axis else "accuracy")
        out["color"].append(Category10_10[k % 10])
    return out


def sweep_page(catalog: CatalogView, doc: Document) -> None:
    entry = entry_of(doc, catalog, ("sweep",))
    if entry is None:
        return
    ds = open_sweep(entry.path)
    axes = [d for d in ds.accuracy_mean.dims if d != "time"]
    curve = Select(title="one curve per", value=axes[0] if axes else "", options=axes,
                   name="curve_axis")
    pickers = {a: Select(title=a, value=str(ds[a].values[0]),
                         options=[str(v) for v in ds[a].values.tolist()]) for a in axes}
    src = ColumnDataSource(sweep_curves(ds, curve.value or None,
                                        {a: p.value for a, p in pickers.items()}),
                           name="sweep_source")
    fig = figure(title="accuracy vs time since programming (simulated: mean ± std over "
                 f"{ds.sizes.get('run', 1)} runs)", x_axis_type="log", width=900,
                 height=480, x_axis_label="time since programming (s)",
                 y_axis_label="accuracy (%)", name="sweep_accuracy")
    fig.patches("band_xs", "band_ys", fill_color="color", fill_alpha=0.15, line_alpha=0,
                source=src)
    fig.multi_line("xs", "ys", line_color="color", line_width=2, legend_field="label",
                   source=src)
    fig.legend.location = "bottom_left"

    def update() -> None:
        for a, p in pickers.items():
            p.disabled = a == curve.value
        src.data = sweep_curves(ds, curve.value or None,
                                {a: p.value for a, p in pickers.items()})

    def on_change(_attr: str, _old: str, _new: str) -> None:
        update()

    curve.on_change("value", on_change)
    for p in pickers.values():
        p.on_change("value", on_change)
    update()
    doc.add_root(column(header(entry), row(curve, *pickers.values()), fig))
    doc.title = f"pcmlab sweep {entry.id}"
