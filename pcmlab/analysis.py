"""Statistics a lab looks at after programming and reading a chip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMModel


@dataclass(frozen=True)
class LevelStats:
    """Programming outcome of the cells that share one target level."""

    target_us: float
    cells: int
    converged_fraction: float
    iterations_p50: float
    iterations_p90: float
    error_mean_us: float  # final verify reading minus target, converged cells
    error_std_us: float
    sigma_prog_us: float  # what the statistical model says
    t0_std_us: float | None = None  # spread of a read at t0 around the target, if taken
    t0_model_std_us: float | None = None


def level_of(target_us: npt.NDArray[np.floating], step_us: float = 2.5
             ) -> npt.NDArray[np.float32]:
    """Group continuous targets into levels ``step_us`` apart (exact levels stay as they are)."""
    t = np.asarray(target_us, dtype=np.float64)
    return (np.round(t / step_us) * step_us).astype(np.float32)


def convergence_by_level(
    target_us: npt.ArrayLike,
    g_verify_us: npt.ArrayLike,
    converged: npt.ArrayLike,
    iterations: npt.ArrayLike,
    *,
    g_t0_us: npt.ArrayLike | None = None,
    t0_s: float | None = None,
    model: PCMModel | None = None,
    step_us: float = 2.5,
) -> list[LevelStats]:
    """One row per target level (targets grouped ``step_us`` apart)."""
    model = model or PCMModel()
    target = np.asarray(target_us, dtype=np.float32)
    g = np.asarray(g_verify_us, dtype=np.float32)
    conv = np.asarray(converged, dtype=bool)
    its = np.asarray(iterations)
    g_t0 = None if g_t0_us is None else np.asarray(g_t0_us, dtype=np.float32)
    t0 = t0_s if t0_s is not None else model.calibration.t0_s
    levels = level_of(target, step_us)
    rows = []
    for level in np.unique(levels):
        sel = levels == level
        ok = sel & conv
        err = (g - target)[ok]
        t0_std = t0_model = None
        if g_t0 is not None and ok.any():
            t0_std = float(np.sqrt(np.mean((g_t0 - target)[ok] ** 2)))
            t0_model = float(model.total_sigma_us(level, t0))
        rows.append(LevelStats(
            target_us=float(level),
            cells=int(sel.sum()),
            converged_fraction=float(conv[sel].mean()),
            iterations_p50=float(np.percentile(its[sel], 50)),
            iterations_p90=float(np.percentile(its[sel], 90)),
            error_mean_us=float(err.mean()) if err.size else float("nan"),
            error_std_us=float(err.std()) if err.size else float("nan"),
            sigma_prog_us=float(model.prog_noise_sigma_us(level)),
            t0_std_us=t0_std,
            t0_model_std_us=t0_model,
        ))
    return rows


@dataclass(frozen=True)
class DriftStats:
    """Drift of the cells that share one target level, beside the calibrated model."""

    target_us: float
    cells: int
    g_first_mean_us: float  # mean at the first readout
    g_first_std_us: float
    g_last_mean_us: float
    nu_mean: float  # fitted per device, then averaged
    nu_std: float
    nu_median: float
    model_nu_mean: float
    model_nu_std: float


def fit_drift_exponents(
    time_s: npt.ArrayLike, g_us: npt.ArrayLike, *, t_min_s: float = 20.0
) -> npt.NDArray[np.float64]:
    """Per-device drift exponent nu from readouts (see ``fit_drift``)."""
    return fit_drift(time_s, g_us, t_min_s=t_min_s)[0]


def fit_drift(
    time_s: npt.ArrayLike, g_us: npt.ArrayLike, *, t_min_s: float = 20.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-device drift exponent nu and the variance of that estimate (from the fit's
    residuals): least squares of ln G on ln t over the readouts at or after ``t_min_s``
    (G <= 0 readings are left out). NaN where fewer than two (for the variance, three)
    readings remain."""
    t = np.asarray(time_s, dtype=np.float64)
    g = np.asarray(g_us, dtype=np.float64)
    use = t >= t_min_s
    if use.sum() < 2:
        raise ConfigError(f"need at least two readouts at or after {t_min_s} s to fit drift, "
                         f"have {int(use.sum())}")
    x = np.log(t[use])[:, None]
    y = g[use]
    valid = y > 0
    y = np.log(np.where(valid, y, 1.0))
    w = valid.astype(np.float64)
    n = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w * x).sum(axis=0) / n
        y_mean = (w * y).sum(axis=0) / n
        dx = (x - x_mean) * w
        sxx = (dx * (x - x_mean)).sum(axis=0)
        slope = (dx * (y - y_mean)).sum(axis=0) / sxx
        resid = (y - y_mean - slope * (x - x_mean)) * w
        slope_var = (resid**2).sum(axis=0) / (n - 2) / sxx
    slope[n < 2] = np.nan
    slope_var[n < 3] = np.nan
    return -slope, slope_var


def drift_by_level(
    target_us: npt.ArrayLike, time_s: npt.ArrayLike, g_us: npt.ArrayLike, *,
    mask: npt.ArrayLike | None = None, model: PCMModel | None = None, step_us: float = 2.5,
) -> list[DriftStats]:
    """Per non-zero target level: conductance at the first and last readout and the fitted
    drift exponents, beside the model's mu_nu and sigma_nu."""
    model = model or PCMModel()
    target = np.asarray(target_us, dtype=np.float32)
    g = np.asarray(g_us, dtype=np.float32)
    keep = np.ones(target.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    nu = fit_drift_exponents(time_s, g, t_min_s=model.calibration.t0_s)
    levels = level_of(target, step_us)
    rows = []
    for level in np.unique(levels[levels > 0]):
        sel = (levels == level) & keep & np.isfinite(nu)
        if not sel.any():
            continue
        rows.append(DriftStats(
            target_us=float(level), cells=int(sel.sum()),
            g_first_mean_us=float(g[0, sel].mean()), g_first_std_us=float(g[0, sel].std()),
            g_last_mean_us=float(g[-1, sel].mean()),
            nu_mean=float(nu[sel].mean()), nu_std=float(nu[sel].std()),
            nu_median=float(np.median(nu[sel])),
            model_nu_mean=float(model.drift_nu_mean(level)),
            model_nu_std=float(model.drift_nu_std(level)),
        ))
    return rows
