"""Statistics a lab looks at after programming and reading a chip."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMModel


@dataclass(frozen=True)
class LevelStats:
    """Programming outcome of the cells that share one target level."""

    target_us: float  # the group's mean target (the level itself for exact levels)
    cells: int
    converged_fraction: float
    iterations_p50: float
    iterations_p90: float
    error_mean_us: float  # final verify reading minus target, converged cells
    error_std_us: float
    sigma_prog_us: float  # what the statistical model says (RMS over the group's targets)
    t0_std_us: float | None = None  # spread of a read at t0 around the target, if taken
    t0_model_std_us: float | None = None
    label: str = ""  # the target as tables and legends show it


EXACT_LEVELS_MAX = 64  # more distinct targets than this are continuous (a network's)
CONTINUOUS_BINS = 10


@dataclass(frozen=True)
class LevelGroups:
    """Which target level every cell belongs to.

    Exact levels (at most ``EXACT_LEVELS_MAX`` distinct targets, as a characterization or
    a levels run programs them) are the targets themselves. Continuous targets (a
    network's weights) are binned: exact zero (the RESET device of every differential
    pair) is a group of its own, the rest are split at quantiles into bins of equal cell
    counts; ``edges_us`` records those edges. Every group reports its own mean target.
    """

    index: npt.NDArray[np.intp]  # per cell, its group; -1 for a cell without a finite target
    mean_target_us: npt.NDArray[np.float64]  # per group
    low_us: npt.NDArray[np.float64]  # smallest target in the group
    high_us: npt.NDArray[np.float64]  # largest target in the group
    edges_us: npt.NDArray[np.float64] | None  # bin edges; None: exact levels

    @property
    def binned(self) -> bool:
        return self.edges_us is not None

    def __len__(self) -> int:
        return int(self.mean_target_us.size)

    def label(self, k: int) -> str:
        """The group's target as a table or legend shows it (µS)."""
        mean, lo, hi = self.mean_target_us[k], self.low_us[k], self.high_us[k]
        if lo == hi:
            return f"{mean:.4g}"
        return f"{mean:.3g} ({lo:.3g}-{hi:.3g})"

    def describe(self) -> str:
        """One line on how the rows were formed."""
        if self.edges_us is None:
            return f"{len(self)} exact target levels, as programmed"
        edges = ", ".join(f"{e:.3g}" for e in self.edges_us)
        return (f"continuous targets: exact 0 apart, the rest in {self.edges_us.size - 1} "
                f"bins of equal cell count, edges {edges} µS; each row is its bin's mean "
                "target (range)")


def group_levels(target_us: npt.ArrayLike, *, max_exact: int = EXACT_LEVELS_MAX,
                 bins: int = CONTINUOUS_BINS) -> LevelGroups:
    """Group cells by their target level (see ``LevelGroups``)."""
    t = np.asarray(target_us, dtype=np.float64).ravel()
    finite = np.isfinite(t)
    index = np.full(t.shape, -1, dtype=np.intp)
    uniq = np.unique(t[finite])
    edges = None
    if uniq.size <= max_exact:
        index[finite] = np.searchsorted(uniq, t[finite])
    else:
        nonzero = finite & (t != 0)
        edges = np.unique(np.quantile(t[nonzero], np.linspace(0, 1, bins + 1)))
        offset = int((finite & (t == 0)).any())  # exact zero first, as group 0
        index[finite & (t == 0)] = 0
        index[nonzero] = offset + np.clip(
            np.searchsorted(edges, t[nonzero], side="right") - 1, 0, edges.size - 2)
    n = int(index.max()) + 1 if index.size and index.max() >= 0 else 0
    counts = np.bincount(index[finite], minlength=n)
    mean = np.bincount(index[finite], weights=t[finite], minlength=n) / np.maximum(counts, 1)
    low = np.full(n, np.inf)
    high = np.full(n, -np.inf)
    np.minimum.at(low, index[finite], t[finite])
    np.maximum.at(high, index[finite], t[finite])
    keep = counts > 0  # a quantile bin may be empty when many targets are equal
    remap = np.cumsum(keep) - 1
    index[finite] = remap[index[finite]]
    return LevelGroups(index, mean[keep], low[keep], high[keep], edges)


def _rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def convergence_by_level(
    target_us: npt.ArrayLike,
    g_verify_us: npt.ArrayLike,
    converged: npt.ArrayLike,
    iterations: npt.ArrayLike,
    *,
    g_t0_us: npt.ArrayLike | None = None,
    t0_s: float | None = None,
    model: PCMModel | None = None,
    groups: LevelGroups | None = None,
) -> list[LevelStats]:
    """One row per target level (``group_levels`` of the targets unless given)."""
    model = model or PCMModel()
    target = np.asarray(target_us, dtype=np.float32)
    g = np.asarray(g_verify_us, dtype=np.float32)
    conv = np.asarray(converged, dtype=bool)
    its = np.asarray(iterations)
    g_t0 = None if g_t0_us is None else np.asarray(g_t0_us, dtype=np.float32)
    t0 = t0_s if t0_s is not None else model.calibration.t0_s
    groups = groups or group_levels(target)
    rows = []
    for k in range(len(groups)):
        sel = groups.index == k
        ok = sel & conv
        err = (g - target)[ok]
        t0_std = t0_model = None
        if g_t0 is not None and ok.any():
            t0_std = float(np.sqrt(np.mean((g_t0 - target)[ok] ** 2)))
            t0_model = _rms(model.total_sigma_us(target[ok], t0))
        rows.append(LevelStats(
            target_us=float(groups.mean_target_us[k]),
            cells=int(sel.sum()),
            converged_fraction=float(conv[sel].mean()),
            iterations_p50=float(np.percentile(its[sel], 50)),
            iterations_p90=float(np.percentile(its[sel], 90)),
            error_mean_us=float(err.mean()) if err.size else float("nan"),
            error_std_us=float(err.std()) if err.size else float("nan"),
            sigma_prog_us=_rms(model.prog_noise_sigma_us(target[sel])),
            t0_std_us=t0_std,
            t0_model_std_us=t0_model,
            label=groups.label(k),
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
    model_nu_mean: float  # mean of mu_nu over the group's targets
    model_nu_std: float  # spread of nu over the group: sigma_nu and the spread of mu_nu
    label: str = ""


def fit_drift_exponents(
    time_s: npt.ArrayLike, g_us: Any, *, t_min_s: float = 20.0
) -> npt.NDArray[np.float64]:
    """Per-device drift exponent nu from readouts (see ``fit_drift``)."""
    return fit_drift(time_s, g_us, t_min_s=t_min_s)[0]


ROW_BLOCK_BYTES = 8 << 20  # conductances read at a time when the rows are not in memory


def row_blocks(g_us: Any) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """The rows of a readout x cell array, a block at a time, as (first row, numpy block):
    a dask array chunk by chunk, anything else that slices by rows (an ndarray, an h5py
    dataset) in blocks of about ``ROW_BLOCK_BYTES``. Memory stays one block."""
    n_rows, n_cells = (int(k) for k in g_us.shape)
    chunks = getattr(g_us, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], tuple):  # dask
        bounds = np.cumsum((0, *chunks[0]))
    else:
        step = max(1, ROW_BLOCK_BYTES // max(1, 4 * n_cells))
        bounds = np.r_[np.arange(0, n_rows, step), n_rows]
    for a, b in itertools.pairwise(bounds):
        if b > a:
            yield int(a), np.asarray(g_us[int(a):int(b)])


def _as_rows(g_us: Any) -> Any:
    """An array of readouts left where it is if it reads by rows (an ndarray, dask,
    h5py), else as a numpy array (its own dtype)."""
    if hasattr(g_us, "shape") and hasattr(g_us, "__getitem__") and getattr(g_us, "ndim", 0) == 2:
        return g_us
    return np.asarray(g_us)


def fit_drift(
    time_s: npt.ArrayLike, g_us: Any, *, t_min_s: float = 20.0,
    age_offset_s: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-device drift exponent nu and the variance of that estimate (from the fit's
    residuals): least squares of ln G on ln t over the readouts at or after ``t_min_s``
    (G <= 0 readings are left out). NaN where fewer than two (for the variance, three)
    readings remain.

    ``g_us`` is readouts x cells: an array, or anything that reads by rows (a dask array,
    an h5py dataset); it is read once, a block of rows at a time, so memory is a few
    per-cell sums whatever the number of readouts. The sums are taken about a shift (the
    mean ln t, each cell's first ln G), which keeps them as accurate as centred ones.

    ``age_offset_s`` (one per cell): how much older than ``time_s`` each cell is (end of
    programming minus its last pulse): the fit is then on ln(each cell's own age), where
    its drift (t / t0)^-nu counts from. Without it every cell counts from ``time_s``, and
    cells programmed minutes before the end fit a nu that is too low."""
    t = np.asarray(time_s, dtype=np.float64)
    g_rows = _as_rows(g_us)
    use = t >= t_min_s
    if use.sum() < 2:
        raise ConfigError(f"need at least two readouts at or after {t_min_s} s to fit drift, "
                         f"have {int(use.sum())}")
    if g_rows.shape[0] != t.size:
        raise ConfigError(f"{t.size} readout times for {g_rows.shape[0]} readouts")
    shift = np.log(t[use]).mean()
    x_all = np.log(np.where(use, t, 1.0)) - shift
    n_cells = int(g_rows.shape[1])
    offset = None
    if age_offset_s is not None:
        offset = np.nan_to_num(np.asarray(age_offset_s, dtype=np.float64))
        if offset.shape != (n_cells,) or (offset < 0).any():
            raise ConfigError(f"age offsets of shape {offset.shape}: need one non-negative "
                              f"offset (s) per cell, {n_cells}")
    n, sx, sy, sxx, sxy, syy = np.zeros((6, n_cells))
    y_ref = None
    for first, block in row_blocks(g_rows):
        rows = use[first:first + block.shape[0]]
        if not rows.any():
            continue
        g = block[rows].astype(np.float64)
        if offset is None:
            x = x_all[first:first + block.shape[0]][rows][:, None]
        else:  # each cell's own age
            x = np.log(t[first:first + block.shape[0]][rows][:, None] + offset) - shift
        valid = g > 0
        y = np.log(np.where(valid, g, 1.0), out=g)
        if y_ref is None:  # each cell's first reading (0 where it is not valid)
            y_ref = np.where(valid[0], y[0], 0.0)
        y -= y_ref
        if not valid.all():
            y *= valid
            n += valid.sum(axis=0)
            sx += (x * valid).sum(axis=0)
            sxx += (x * x * valid).sum(axis=0)
        else:
            n += valid.shape[0]
            sx += x.sum(axis=0)
            sxx += (x * x).sum(axis=0)
        sy += y.sum(axis=0)
        sxy += (x * y).sum(axis=0)
        syy += np.einsum("ij,ij->j", y, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_var = sxx - sx * sx / n
        xy_cov = sxy - sx * sy / n
        slope = xy_cov / x_var
        rss = np.maximum(syy - sy * sy / n - slope * xy_cov, 0.0)
        slope_var = rss / (n - 2) / x_var
    slope[n < 2] = np.nan
    slope_var[n < 3] = np.nan
    return -slope, slope_var


def drift_by_level(
    target_us: npt.ArrayLike, time_s: npt.ArrayLike, g_us: Any, *,
    mask: npt.ArrayLike | None = None, model: PCMModel | None = None,
    groups: LevelGroups | None = None,
) -> list[DriftStats]:
    """Per non-zero target level (``group_levels``): conductance at the first and last
    readout and the fitted drift exponents, beside the model's mu_nu and sigma_nu."""
    model = model or PCMModel()
    target = np.asarray(target_us, dtype=np.float32)
    g = _as_rows(g_us)  # read by rows: the fit, then the first and the last readout
    if isinstance(g, np.ndarray):
        g = g.astype(np.float32, copy=False)  # as the file holds them
    keep = np.ones(target.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    nu = fit_drift_exponents(time_s, g, t_min_s=model.calibration.t0_s)
    g_first = np.asarray(g[0], dtype=np.float32)
    g_last = np.asarray(g[g.shape[0] - 1], dtype=np.float32)
    groups = groups or group_levels(target)
    rows = []
    for k in range(len(groups)):
        sel = (groups.index == k) & keep & np.isfinite(nu)
        if groups.high_us[k] <= 0 or not sel.any():
            continue
        mu = model.drift_nu_mean(target[sel])
        rows.append(DriftStats(
            target_us=float(groups.mean_target_us[k]), cells=int(sel.sum()),
            g_first_mean_us=float(g_first[sel].mean()),
            g_first_std_us=float(g_first[sel].std()),
            g_last_mean_us=float(g_last[sel].mean()),
            nu_mean=float(nu[sel].mean()), nu_std=float(nu[sel].std()),
            nu_median=float(np.median(nu[sel])),
            model_nu_mean=float(mu.mean()),
            model_nu_std=float(np.sqrt(np.mean(model.drift_nu_std(target[sel]) ** 2)
                                       + mu.var())),
            label=groups.label(k),
        ))
    return rows
