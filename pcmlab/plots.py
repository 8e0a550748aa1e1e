"""PNG figures of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from pcmlab.analysis import group_levels
from pcmlab.errors import ConfigError
from pcmlab.pcm_model import ACCURACY_TIME_LABELS, ACCURACY_TIMES_S


def _pyplot():  # -> matplotlib.pyplot, headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drift_curves(target_us: npt.ArrayLike, converged: npt.ArrayLike, g_us: npt.ArrayLike
                 ) -> list[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.float32],
                                 npt.NDArray[np.float32]]]:
    """Per non-zero target level (``group_levels``), over the converged cells: the legend
    label (µS), and the median, 10th and 90th percentile of G at every readout."""
    groups = group_levels(target_us)
    conv = np.asarray(converged, dtype=bool)
    g = np.asarray(g_us)
    out = []
    for k in range(len(groups)):
        sel = (groups.index == k) & conv
        if groups.high_us[k] <= 0 or not sel.any():
            continue
        out.append((f"{groups.label(k)} µS", np.median(g[:, sel], axis=1),
                    np.percentile(g[:, sel], 10, axis=1), np.percentile(g[:, sel], 90, axis=1)))
    return out


def plot_run(
    path: str | Path,
    target_us: npt.NDArray[np.float32],
    verify_us: npt.NDArray[np.float32],
    converged: npt.NDArray[np.bool_],
    time_s: npt.NDArray[np.float64],
    g_us: npt.NDArray[np.float32],
    title: str = "",
) -> Path:
    """Conductance vs time per target level (log axes; median and 10-90 % band) and the
    programming-error histogram."""
    plt = _pyplot()
    path = Path(path)
    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(12, 4.8))
    if time_s.size:
        cmap = plt.get_cmap("viridis")
        curves = drift_curves(target_us, converged, g_us)
        for k, (label, median, p10, p90) in enumerate(curves):
            color = cmap(k / max(len(curves) - 1, 1))
            ax_t.plot(time_s, median, color=color, label=label)
            ax_t.fill_between(time_s, p10, p90, color=color, alpha=0.2)
        ax_t.set_xscale("log")
        ax_t.set_yscale("log")
        ax_t.legend(fontsize="small", ncol=2)
    else:
        ax_t.text(0.5, 0.5, "no readouts yet", ha="center", transform=ax_t.transAxes)
    ax_t.set_xlabel("time since programming (s)")
    ax_t.set_ylabel("conductance (µS)")
    ax_t.set_title("drift per target level (median, 10-90 %)")
    err = (verify_us - target_us)[converged & (target_us > 0)]
    ax_h.hist(err, bins=80, color="tab:blue")
    ax_h.set_xlabel("final verify reading - target (µS)")
    ax_h.set_ylabel("cells")
    ax_h.set_title("programming error (converged, non-zero)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _time_label(t_s: float) -> str:
    """A tick label for a time since programming: "20 s", "5 min", "1 h", "1 day"..."""
    for size, unit in ((365 * 86400.0, "year"), (86400.0, "day"), (3600.0, "h"),
                       (60.0, "min")):
        if t_s >= size:
            return f"{t_s / size:.3g} {unit}"
    return f"{t_s:.3g} s"


CHIP_CURVES = (("uncorrected", "chip MVM, uncorrected", ":"),
               ("drift_compensated", "chip MVM + GDC", "--"),
               ("calibrated_once", "chip MVM, calibrated once", "-."),
               ("recalibrated", "chip MVM, recalibrated", "-"))


def accuracy_figure(
    measured_time_s: npt.NDArray[np.float64],
    measured_accuracy: npt.NDArray[np.float64],
    simulated_time_s: npt.NDArray[np.float64] | None = None,
    simulated_mean: npt.NDArray[np.float64] | None = None,
    simulated_std: npt.NDArray[np.float64] | None = None,
    ideal_accuracy: float | None = None,
    title: str = "",
    chip=None,
):  # -> matplotlib.figure.Figure
    """Accuracy vs time since programming: simulated mean +- std band, measured points on
    top (as Figure 7 of the AnalogNets paper); ``chip``: chip-mode rows (ChipModeAccuracy),
    drawn as lines (uncorrected, drift-compensated, calibrated once, recalibrated).

    The accuracy axis spans the curves (not 0-100 %); a curve far below the others (the
    chip's uncorrected outputs after drift) gets a panel of its own beside, with the main
    panel's range marked, so every curve is seen whole. The time axis starts at the first
    read (t0) and says so."""
    plt = _pyplot()
    t_meas = np.asarray(measured_time_s, dtype=np.float64)
    curves: list[tuple[str, np.ndarray, np.ndarray, str, dict]] = []  # label, t, %, kind
    if simulated_time_s is not None and simulated_mean is not None:
        mean = 100 * np.asarray(simulated_mean, dtype=np.float64)
        std = (np.zeros_like(mean) if simulated_std is None
               else 100 * np.asarray(simulated_std, dtype=np.float64))
        curves.append(("simulated (PCM model), mean ± std", np.asarray(simulated_time_s),
                       mean, "band", {"std": std}))
    curves.append(("measured (reads)", t_meas, 100 * np.asarray(measured_accuracy), "points",
                   {}))
    if chip:
        t_chip = np.array([r.time_s for r in chip], dtype=np.float64)
        for name, label, style in CHIP_CURVES:
            curves.append((label, t_chip, np.array([100 * getattr(r, name) for r in chip]),
                           "line", {"style": style, "name": name}))
    ideal = None if ideal_accuracy is None else 100 * float(ideal_accuracy)
    # the main panel's range: every curve but the uncorrected chip outputs
    near = [ideal] if ideal is not None else []
    for _, _, y, kind, opt in curves:
        if opt.get("name") == "uncorrected":
            continue
        near += [*(y - opt["std"]), *(y + opt["std"])] if kind == "band" else [*y]
    finite = np.asarray([v for v in near if np.isfinite(v)], dtype=np.float64)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    pad = max(0.5, 0.1 * (hi - lo))
    y_lim = (max(lo - pad, 0.0), min(hi + pad, 100.5))
    apart = [c for c in curves if c[4].get("name") == "uncorrected"
             and np.nanmin(c[2]) < y_lim[0]]
    if apart:
        fig, (ax, ax_apart) = plt.subplots(1, 2, figsize=(11, 5.2),
                                           gridspec_kw={"width_ratios": (2.6, 1)})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 5.2))
        ax_apart = None
    t_all = np.concatenate([c[1] for c in curves])
    t_first, t_last = float(np.nanmin(t_all)), float(np.nanmax(t_all))
    ticks = [t_first] + [t for t in ACCURACY_TIMES_S[1:] if t > 2 * t_first]
    labels = [_time_label(t_first)] + [lab for t, lab in zip(
        ACCURACY_TIMES_S[1:], ACCURACY_TIME_LABELS[1:], strict=True) if t > 2 * t_first]

    def time_axis(a) -> None:
        a.set_xscale("log")
        a.set_xlim(t_first / 1.15, t_last * 1.15)  # starts at the first read
        a.set_xticks(ticks, labels)
        a.set_xticks([], minor=True)
        a.set_xlabel(f"time since programming (first read at {_time_label(t_first)})")
        a.grid(alpha=0.3)

    for label, t, y, kind, opt in curves:
        target = ax_apart if any(c[0] == label for c in apart) else ax
        if kind == "band":
            target.fill_between(t, y - opt["std"], y + opt["std"], color="tab:blue",
                                alpha=0.25, label=label)
            target.plot(t, y, color="tab:blue")
        elif kind == "points":
            target.plot(t, y, "o", color="tab:red", label=label, zorder=3)
        else:
            target.plot(t, y, opt["style"], color="tab:green", label=label)
    if ideal is not None:
        ax.axhline(ideal, color="gray", ls="--", label="float model")
    ax.set_ylim(*y_lim)
    ax.set_ylabel("test accuracy (%)")
    time_axis(ax)
    # below the panel: inside, it would hide the points of curves this close together
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small")
    if ax_apart is not None:
        y = np.concatenate([c[2] for c in apart])
        span = y_lim[1] - float(np.nanmin(y))
        ax_apart.set_ylim(max(float(np.nanmin(y)) - 0.05 * span, 0.0), y_lim[1])
        ax_apart.axhspan(*y_lim, color="gray", alpha=0.15, label="range of the left panel")
        time_axis(ax_apart)
        ax_apart.set_xticks(ticks[::2], labels[::2])
        ax_apart.set_title("far below the others", fontsize="medium")
        ax_apart.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_accuracy(path: str | Path, *args, **kwargs) -> Path:
    """``accuracy_figure`` (same arguments after the path) written to ``path``."""
    return _save(accuracy_figure(*args, **kwargs), Path(path))


def plot_sweep(path: str | Path, ds, curves: str | None = None, *,
               title: str = "") -> Path:
    """A sweep result (xarray Dataset of ``pcmlab sweep``) as accuracy-vs-time panels, the
    shape of Figure 7 of the AnalogNets paper: one curve per value of ``curves`` (default
    the ``bits`` axis if there is one, else the first), the band the std over runs; one
    panel per combination of the other axes (at most 16)."""
    import itertools

    plt = _pyplot()
    path = Path(path)
    axes_names = [d for d in ds.accuracy.dims if d not in ("run", "time")]
    if curves is None:
        curves = "bits" if "bits" in axes_names else (axes_names[0] if axes_names else None)
    if curves is not None and curves not in axes_names:
        raise ConfigError(f"--curves {curves}: the sweep's axes are "
                          f"{', '.join(axes_names) or 'none'}")
    others = [n for n in axes_names if n != curves]
    panels = list(itertools.product(*(ds[n].values.tolist() for n in others)))
    if len(panels) > 16:
        raise ConfigError(f"{len(panels)} panels (axes {', '.join(others)}): too many for "
                          "one figure; plot a selection (ds.sel(...)) or choose --curves")
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), sharey=True,
                             squeeze=False)
    t = ds.time_s.values
    cmap = plt.get_cmap("tab10")
    values = ds[curves].values.tolist() if curves is not None else [None]
    for ax, combo in zip(grid.ravel(), panels, strict=False):
        where = dict(zip(others, combo, strict=True))
        for k, v in enumerate(values):
            sel = ds.sel({**where, **({curves: v} if curves is not None else {})})
            mean, std = 100 * sel.accuracy_mean.values, 100 * sel.accuracy_std.values
            color = cmap(k % 10)
            ax.plot(t, mean, marker="o", color=color,
                    label=f"{curves} {v}" if curves is not None else "accuracy")
            ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(t, ds.time_label.values.tolist())
        ax.set_title(", ".join(f"{n} {v}" for n, v in where.items()) or "sweep")
        ax.grid(alpha=0.3)
    for ax in grid.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax in grid[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    grid[0][0].legend(loc="lower left", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_fit(path: str | Path, levels, fitted, prior) -> Path:
    """Measured per-level statistics against the fitted and the prior model curves.
    ``levels``: LevelFit rows; ``fitted``/``prior``: PCMModel."""
    plt = _pyplot()
    path = Path(path)
    g = np.array([lv.target_us for lv in levels])
    grid = np.linspace(max(g.min(), 0.0), g.max(), 200)
    gn = grid[grid > 0]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    a1.plot(g, [lv.sigma_prog_us for lv in levels], "o", label="measured")
    a1.plot(grid, fitted.prog_noise_sigma_us(grid), "-", label="fit")
    a1.plot(grid, prior.prog_noise_sigma_us(grid), ":", color="gray", label="prior")
    a1.set_title("programming noise σ_prog (µS)")
    nz = g > 0
    a2.errorbar(g[nz], [lv.nu_mean for lv in levels if lv.target_us > 0],
                yerr=[lv.nu_std for lv in levels if lv.target_us > 0], fmt="o",
                capsize=3, label="measured mean ± std")
    a2.plot(gn, fitted.drift_nu_mean(gn), "-", label="fit μ_ν")
    a2.fill_between(gn, fitted.drift_nu_mean(gn) - fitted.drift_nu_std(gn),
                    fitted.drift_nu_mean(gn) + fitted.drift_nu_std(gn), alpha=0.2)
    a2.plot(gn, prior.drift_nu_mean(gn), ":", color="gray", label="prior μ_ν")
    a2.set_title("drift exponent ν")
    a3.plot(g[nz], [lv.q_s for lv in levels if lv.target_us > 0], "o", label="measured")
    a3.plot(gn, fitted.read_noise_q(gn), "-", label="fit")
    a3.plot(gn, prior.read_noise_q(gn), ":", color="gray", label="prior")
    a3.set_yscale("log")
    a3.set_title("read noise Q_s")
    for ax in (a1, a2, a3):
        ax.set_xlabel("target conductance (µS)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_path(path: str | Path) -> Path:
    """A figure file name pcmlab writes (.png, .pdf, .svg), or ConfigError saying so."""
    p = Path(path)
    if p.suffix.lower() not in FIGURE_SUFFIXES:
        raise ConfigError(f"{p}: a figure is written as {', '.join(FIGURE_SUFFIXES)}; choose "
                          "a file name with one of these suffixes")
    return p
