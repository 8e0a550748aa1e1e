"""A run's page: the array as a heatmap at any readout, convergence, drift per level
beside the model, the schedule; followed live while the run is written."""

from __future__ import annotations

import html
import logging
import time

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    Div,
    FactorRange,
    LinearColorMapper,
    Range1d,
    Slider,
)
from bokeh.palettes import Category10_10, Viridis256
from bokeh.plotting import figure

from pcmlab.dashboard.catalog import CatalogView
from pcmlab.dashboard.data import RunData, SharedRuns
from pcmlab.dashboard.pages.common import entry_of, fmt_s, header

log = logging.getLogger(__name__)

POLL_MS = 250  # how often a page looks for new readouts in a live run's file
HEATMAP_WIDTH_PX = 1000


def _color(k: int) -> str:
    return Category10_10[k % 10]


def _status_text(data: RunData) -> str:
    planned = int(data.schedule_time_s.size)
    n = data.n_readouts
    text = f"readouts: {n} of {planned}"
    if n:
        text += f"; last at {fmt_s(data.time_s[-1])} after programming"
    if n < planned:
        text += f"; next planned at {fmt_s(float(data.schedule_time_s[n]))}"
    return text


class RunPage:
    def __init__(self, doc: Document, data: RunData, title_div: Div) -> None:
        self.doc, self.data = doc, data
        self.shown = data.n_readouts  # readouts this page has drawn (the data is shared)
        self.status = Div(text=_status_text(data), name="readout_status")
        self._heatmap()
        self._convergence()
        self._drift_curves()
        self._nu()
        self._schedule()
        origin = Div(text=f"model (bands, dashed lines, model ν): {html.escape(data.model_origin)}",
                     name="model_origin")
        doc.add_root(column(title_div, self.status, row(self.slider), self.heat,
                            row(self.conv, self.iters), origin,
                            row(self.curves, self.nu_fig), self.sched, name="run_page"))

    # -- the array -------------------------------------------------------------------------
    def _heatmap(self) -> None:
        d = self.data
        rows, cols = d.shape
        img = d.image()
        high = float(max(d.model.calibration.g_max_us, np.nanpercentile(img, 99.9)
                         if np.isfinite(img).any() else 0.0))
        self.mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=high,
                                        nan_color="#dddddd")
        height = int(max(200, min(600, HEATMAP_WIDTH_PX * rows / cols + 60)))
        self.heat = figure(title="conductance (µS) of the array", width=HEATMAP_WIDTH_PX,
                           height=height, x_range=Range1d(0, cols), y_range=Range1d(rows, 0),
                           tools="pan,wheel_zoom,box_zoom,reset,hover", name="heatmap",
                           tooltips=[("row", "$y{0}"), ("col", "$x{0}"), ("G (µS)", "@image")],
                           x_axis_label="column", y_axis_label="row")
        self.image_source = ColumnDataSource({"image": [img]}, name="heatmap_source")
        self.heat.image(image="image", x=0, y=0, dw=cols, dh=rows, color_mapper=self.mapper,
                        source=self.image_source)
        self.heat.add_layout(ColorBar(color_mapper=self.mapper, title="µS"), "right")
        n = d.n_readouts
        # the slider counts readouts from 1, as the schedule and the status line do
        self.slider = Slider(start=1, end=max(n, 2), value=max(n, 1), step=1,
                             title=self._slider_title(n - 1), disabled=n < 2, width=600,
                             name="readout_slider")
        self.slider.on_change("value_throttled", self._on_slide)

    def _slider_title(self, i: int) -> str:
        if i < 0:
            return "no readouts yet: the final verify reading"
        return f"readout {i + 1} of {self.data.n_readouts}, {fmt_s(self.data.time_s[i])} " \
            "after programming"

    def _on_slide(self, _attr: str, _old: int, new: int) -> None:
        i = min(int(new), self.data.n_readouts) - 1
        self.image_source.data = {"image": [self.data.image(i)]}
        self.slider.title = self._slider_title(i)

    # -- programming -----------------------------------------------------------------------
    def _convergence(self) -> None:
        stats = self.data.convergence() or []
        labels = [s.label for s in stats]
        src = ColumnDataSource({
            "level": labels, "converged_pct": [100 * s.converged_fraction for s in stats],
            "p50": [s.iterations_p50 for s in stats], "p90": [s.iterations_p90 for s in stats],
            "cells": [s.cells for s in stats]}, name="convergence_source")
        title = "converged share per target level (µS)" if stats else \
            "program-and-verify has not finished"
        self.conv = figure(title=title, x_range=FactorRange(*labels), width=600, height=300,
                           y_range=Range1d(0, 105), y_axis_label="converged (%)",
                           tools="hover", tooltips=[("level", "@level"), ("cells", "@cells"),
                                                    ("converged", "@converged_pct{0.0} %")],
                           name="convergence")
        self.conv.vbar(x="level", top="converged_pct", width=0.8, source=src)
        self.conv.xaxis.major_label_orientation = 0.8
        self.iters = figure(title="iterations per level: median, 90th percentile",
                            x_range=self.conv.x_range, width=600, height=300,
                            y_axis_label="iterations", tools="hover",
                            tooltips=[("p50", "@p50"), ("p90", "@p90")], name="iterations")
        self.iters.vbar(x="level", top="p50", width=0.8, source=src, legend_label="median")
        self.iters.scatter(x="level", y="p90", size=9, marker="triangle", color="firebrick",
                           source=src, legend_label="90th percentile")
        self.iters.xaxis.major_label_orientation = 0.8
        self.iters.legend.location = "top_left"

    # -- drift -----------------------------------------------------------------------------
    def _drift_curves(self) -> None:
        # one source (and four renderers) for every level: a figure with a renderer per
        # level and glyph takes Bokeh seconds to build and the browser long to render
        d = self.data
        self.curves = figure(title="conductance vs time per level: measured mean ± std "
                             "(dots), model mean ± std (band)", x_axis_type="log", width=800,
                             height=450, x_axis_label="time since programming (s)",
                             y_axis_label="conductance (µS)", name="level_curves")
        models = {c.label: c for c in d.model_curves()}
        labels = d.level_labels()
        self.levels = [k for k, label in enumerate(labels)
                       if d.groups.high_us[k] > 0 and label in models]
        m = [models[labels[k]] for k in self.levels]
        model_source = ColumnDataSource({
            "xs": [c.model_time_s for c in m],
            "ys": [c.model_mean_us for c in m],
            "band_xs": [np.concatenate([c.model_time_s, c.model_time_s[::-1]]) for c in m],
            "band_ys": [np.concatenate([c.model_mean_us - c.model_std_us,
                                        (c.model_mean_us + c.model_std_us)[::-1]]) for c in m],
            "color": [_color(k) for k in self.levels]}, name="model_source")
        self.curves.patches("band_xs", "band_ys", fill_color="color", fill_alpha=0.15,
                            line_alpha=0, source=model_source)
        self.curves.multi_line("xs", "ys", line_color="color", line_dash="dashed",
                               line_alpha=0.8, source=model_source)
        self.level_source = ColumnDataSource(self._level_columns(range(d.n_readouts)),
                                             name="level_source")
        self.curves.segment(x0="time_s", y0="lo_us", x1="time_s", y1="hi_us",
                            source=self.level_source, line_color="color")
        self.curves.scatter("time_s", "mean_us", source=self.level_source, color="color",
                            size=6, legend_field="label")
        self.curves.legend.location = "top_right"
        self.curves.legend.label_text_font_size = "8pt"

    def _level_columns(self, readouts) -> dict[str, list]:
        """One row per (readout, level): its time, mean ± std over the level's converged
        cells."""
        d = self.data
        labels = d.level_labels()
        out: dict[str, list] = {c: [] for c in ("level", "label", "color", "time_s",
                                                "mean_us", "lo_us", "hi_us")}
        for i in readouts:
            for k in self.levels:
                mean, std = float(d.level_mean_us[i][k]), float(d.level_std_us[i][k])
                out["level"].append(k)
                out["label"].append(f"{labels[k]} µS")
                out["color"].append(_color(k))
                out["time_s"].append(max(d.time_s[i], 1e-3))
                out["mean_us"].append(mean)
                out["lo_us"].append(mean - std)
                out["hi_us"].append(mean + std)
        return out

    def _nu_columns(self) -> dict[str, list[float]]:
        stats = self.data.drift() or []
        return {"target_us": [s.target_us for s in stats], "nu": [s.nu_mean for s in stats],
                "nu_lo": [s.nu_mean - s.nu_std for s in stats],
                "nu_hi": [s.nu_mean + s.nu_std for s in stats],
                "model": [s.model_nu_mean for s in stats],
                "model_lo": [s.model_nu_mean - s.model_nu_std for s in stats],
                "model_hi": [s.model_nu_mean + s.model_nu_std for s in stats],
                "cells": [s.cells for s in stats]}

    def _nu(self) -> None:
        self.nu_source = ColumnDataSource(self._nu_columns(), name="nu_source")
        self.nu_fig = figure(title="drift exponent ν per level: fitted, mean ± std over "
                             f"{self.data.sample.size} cells; model",
                             width=500, height=450, x_axis_label="target (µS)",
                             y_axis_label="ν", name="drift_exponent", tools="hover",
                             tooltips=[("target", "@target_us"), ("ν", "@nu"),
                                       ("model", "@model"), ("cells", "@cells")])
        s = self.nu_source
        self.nu_fig.varea(x="target_us", y1="model_lo", y2="model_hi", source=s,
                          fill_alpha=0.2, fill_color="gray", legend_label="model ± std")
        self.nu_fig.line("target_us", "model", source=s, line_color="black",
                         line_dash="dashed", legend_label="model μν")
        self.nu_fig.scatter("target_us", "nu", source=s, size=8, color="firebrick",
                            legend_label="measured")
        self.nu_fig.segment(x0="target_us", y0="nu_lo", x1="target_us", y1="nu_hi", source=s,
                            line_color="firebrick")

    # -- the schedule ----------------------------------------------------------------------
    def _schedule_columns(self) -> dict[str, list]:
        d = self.data
        planned = d.schedule_time_s
        n = d.n_readouts
        done = [i < n for i in range(planned.size)]
        t = [float(d.time_s[i]) if i < n else float(planned[i]) for i in range(planned.size)]
        return {"time_s": [max(x, 1e-3) for x in t], "planned_s": planned.tolist(),
                "y": [1.0] * planned.size,
                "state": ["taken" if x else "to come" for x in done],
                "color": ["#1f77b4" if x else "#ffffff" for x in done]}

    def _schedule(self) -> None:
        self.sched_source = ColumnDataSource(self._schedule_columns(), name="schedule_source")
        self.sched = figure(title="readout schedule: taken (filled) and to come (hollow)",
                            x_axis_type="log", width=1300, height=150, y_range=Range1d(0, 2),
                            x_axis_label="time since programming (s)", tools="hover",
                            tooltips=[("time", "@time_s s"), ("planned", "@planned_s s"),
                                      ("", "@state")], name="schedule")
        self.sched.yaxis.visible = False
        self.sched.scatter("time_s", "y", source=self.sched_source, size=12,
                           fill_color="color", line_color="#1f77b4")

    # -- live ------------------------------------------------------------------------------
    def poll(self) -> None:
        try:
            self.data.poll()  # the file's new rows (another page of it may have taken them)
        except Exception:  # a file that went bad stops following, and says so
            log.exception("following %s", self.data.path)
            self.status.text = "the file cannot be read any more; following stopped"
            self.doc.remove_periodic_callback(self.callback)
            return
        new = list(range(self.shown, self.data.n_readouts))
        if not new:
            return
        self.shown = self.data.n_readouts
        self.level_source.stream(self._level_columns(new))
        self.nu_source.data = self._nu_columns()
        self.sched_source.data = self._schedule_columns()
        n = self.data.n_readouts
        at_end = self.slider.value >= n - len(new)
        self.slider.end = max(n, 2)
        self.slider.disabled = n < 2
        if at_end:  # the page follows the newest readout unless an older one was picked
            self.slider.value = n
            self.image_source.data = {"image": [self.data.image()]}
            self.slider.title = self._slider_title(n - 1)
        self.status.text = _status_text(self.data)


def run_page(catalog: CatalogView, doc: Document, *, shared: SharedRuns | None = None
             ) -> None:
    """The page; ``shared``: the server's open files, which its pages of one file share
    (None: this page's own)."""
    entry = entry_of(doc, catalog, ("run", "deployment", "characterization"))
    if entry is None:
        return
    t = time.perf_counter()
    if shared is None:  # (an empty SharedRuns is falsy: never `shared or ...`)
        shared = SharedRuns()
    data = shared.acquire(entry.path)
    try:
        data.poll()  # what was flushed since another page of this file last looked
        page = RunPage(doc, data, header(entry))
    except BaseException:
        shared.release(data)
        raise
    log.info("run page of %s built in %.2f s", entry.id, time.perf_counter() - t)
    doc.title = f"pcmlab run {entry.id}"
    page.callback = doc.add_periodic_callback(page.poll, POLL_MS)
    doc.on_session_destroyed(lambda _ctx: shared.release(data))
