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


def plot_accuracy(
    path: str | Path,
    measured_time_s: npt.NDArray[np.float64],
    measured_accuracy: npt.NDArray[np.float64],
    simulated_time_s: npt.NDArray[np.float64] | None = None,
    simulated_mean: npt.NDArray[np.float64] | None = None,
    simulated_std: npt.NDArray[np.float64] | None = None,
    ideal_accuracy: float | None = None,
    title: str = "",
    chip=None,
) -> Path:
    """Accuracy vs time since programming: simulated mean +- std band, measured points on
    top (as Figure 7 of the AnalogNets paper); ``chip``: chip-mode rows (ChipModeAccuracy),
    drawn as lines (uncorrected, drift-compensated, recalibrated)."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if simulated_time_s is not None and simulated_mean is not None:
        std = np.zeros_like(simulated_mean) if simulated_std is None else simulated_std
        ax.fill_between(simulated_time_s, 100 * (simulated_mean - std),
                        100 * (simulated_mean + std), color="tab:blue", alpha=0.25,
                        label="simulated (PCM model), mean ± std")
        ax.plot(simulated_time_s, 100 * simulated_mean, color="tab:blue")
    ax.plot(measured_time_s, 100 * np.asarray(measured_accuracy), "o", color="tab:red",
            label="measured (reads)")
    if chip:
        t = [r.time_s for r in chip]
        for name, label, style in (("uncorrected", "chip MVM, uncorrected", ":"),
                                   ("drift_compensated", "chip MVM + GDC", "--"),
                                   ("recalibrated", "chip MVM, recalibrated", "-")):
            ax.plot(t, [100 * getattr(r, name) for r in chip], style, color="tab:green",
                    label=label)
    if ideal_accuracy is not None:
        ax.axhline(100 * ideal_accuracy, color="gray", ls="--", label="float model")
    ax.set_xscale("log")
    ax.set_xticks(ACCURACY_TIMES_S, ACCURACY_TIME_LABELS)
    ax.set_xlabel("time since programming")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    return _save(fig, path)


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
