"""Fit the statistical PCM model to a characterization file (``pcmlab characterize``).

Per level: the spread of the burst mean around the target minus the share of read noise
left in it gives sigma_prog; the spread within the burst gives the read noise, hence
Q_s; per-device drift exponents from a log-log fit of the drift reads give mu_nu and
sigma_nu (the fit's own noise, from its residuals, taken out). The model's functional
forms are then fitted to the levels: a quadratic for sigma_prog, clipped lines in ln g_T
for mu_nu and sigma_nu, q / g^e for Q_s (exponent kept from the prior calibration).

Faulty devices are counted from the programming result (``fit_faults``): cells that did
not converge and read near 0 at a clearly non-zero target are stuck RESET; cells that did
not converge and read high at a low target are stuck SET; cells that did not converge and
stay well below a high target are weak, their verify readings giving the ceiling's range.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pcmlab.analysis import fit_drift
from pcmlab.errors import SchemaError
from pcmlab.pcm_model import PCMCalibration, PCMModel
from pcmlab.store import RunReader

MIN_CELLS_PER_LEVEL = 50


@dataclass(frozen=True)
class LevelFit:
    """What was measured at one level (µS, seconds)."""

    target_us: float
    cells: int
    sigma_prog_us: float
    read_sigma_us: float  # within-burst spread at the burst's mean time
    q_s: float
    nu_mean: float
    nu_std: float


@dataclass(frozen=True)
class FaultFit:
    """Faulty devices counted in a characterization: (count, cells it was counted among)."""

    stuck_reset: tuple[int, int]
    stuck_set: tuple[int, int]
    weak: tuple[int, int]
    stuck_set_range_us: tuple[float, float] | None
    weak_ceiling_range_us: tuple[float, float] | None

    @staticmethod
    def rate(counted: tuple[int, int]) -> float:
        return counted[0] / counted[1] if counted[1] else math.nan


@dataclass(frozen=True)
class FitResult:
    calibration: PCMCalibration
    levels: list[LevelFit]
    burst_time_s: float
    faults: FaultFit | None = None


def _wls(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64],
         w: npt.NDArray[np.float64], degree: int) -> npt.NDArray[np.float64]:
    """Weighted polynomial least squares; coefficients lowest power first."""
    a = np.vander(x, degree + 1, increasing=True) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(a, y * np.sqrt(w), rcond=None)
    return coef


def fit_clipped_line(x: npt.ArrayLike, y: npt.ArrayLike, w: npt.ArrayLike,
                     prior: tuple[float, float, float, float]
                     ) -> tuple[float, float, float, float]:
    """(a, b, lo, hi) of y = clip(a x + b, lo, hi) for points sorted or not.

    Every split of the points (ordered by the line's direction) into a plateau, a linear
    part and a second plateau is tried; the least weighted squared error wins. Where the
    data do not pin a value (a plateau with no point, a line through fewer than two), the
    prior's is kept."""
    x, y, w = (np.asarray(v, dtype=np.float64) for v in (x, y, w))
    a0, b0, lo0, hi0 = prior
    order = np.argsort(x)
    x, y, w = x[order], y[order], w[order]
    n = x.size
    best, best_err = prior, math.inf
    for i, j in itertools.combinations(range(n + 1), 2):
        # points [0, i) on the left plateau, [i, j) on the line, [j, n) on the right
        mid = slice(i, j)
        if j - i >= 2:
            b, a = _wls(x[mid], y[mid], w[mid], 1)
        elif j - i == 1:
            a = a0
            b = y[i] - a * x[i]
        else:
            a, b = a0, b0
        left = float(np.average(y[:i], weights=w[:i])) if i else None
        right = float(np.average(y[j:], weights=w[j:])) if j < n else None
        if a < 0:  # falling line: high plateau on the left
            hi, lo = (left if left is not None else hi0), (right if right is not None else lo0)
        else:
            lo, hi = (left if left is not None else lo0), (right if right is not None else hi0)
        if lo > hi:
            continue
        pred = np.clip(a * x + b, lo, hi)
        err = float(np.sum(w * (pred - y) ** 2))
        if err < best_err - 1e-15:
            best, best_err = (float(a), float(b), float(lo), float(hi)), err
    return best


def fit_file(path: str | Path, prior: PCMCalibration | None = None) -> FitResult:
    """Fit the model to a characterization file; SchemaError names what is missing."""
    prior = prior or PCMCalibration()
    model = PCMModel(prior)
    with RunReader(path) as run:
        spec = run.config.get("characterize")
        if spec is None:
            raise SchemaError(f"{path}: not a characterization file (no 'characterize' "
                              "settings in its configuration); make one with "
                              "'pcmlab characterize'")
        n_burst = int(spec["burst_reads"])
        prog = run.programming()
        if prog is None:
            raise SchemaError(f"{path}: programming never finished; nothing to fit")
        ro = run.readouts()
        target = run.targets().conductance_us
    if ro.n < n_burst + 2:
        raise SchemaError(f"{path}: the fit needs the {n_burst} read-noise reads and at "
                          f"least 2 drift reads; the file has {ro.n} readouts (resume the "
                          "run to complete it)")
    burst = ro.conductance_us[:n_burst].astype(np.float64)
    burst_t = float(ro.time_s[:n_burst].mean())
    # each cell's own age: the readouts count from the end of programming, a cell's drift
    # from its last pulse (seconds to minutes earlier on a large array)
    offset_s = np.nan_to_num(prog.end_chip_time_s - prog.last_pulse_s).clip(min=0.0)
    nu_all, nu_var_all = fit_drift(ro.time_s, ro.conductance_us, t_min_s=prior.t0_s,
                                   age_offset_s=offset_s)
    levels = []
    for level in np.unique(target):
        sel = (target == level) & prog.converged
        count = int(sel.sum())
        if count < MIN_CELLS_PER_LEVEL:
            raise SchemaError(f"{path}: level {level:g} µS has {count} converged cells; the "
                              f"fit needs at least {MIN_CELLS_PER_LEVEL} per level "
                              "(characterize with more --cells-per-level)")
        b = burst[:, sel]
        within = b.var(axis=0, ddof=1).mean()  # read noise variance at the burst time
        spread = np.mean((b.mean(axis=0) - level) ** 2)  # programming + burst-averaged read
        sigma_prog = math.sqrt(max(spread - within / n_burst, 0.0))
        read_sigma = math.sqrt(within)
        g_mean = float(b.mean())
        log_factor = float(model.read_noise_log_factor(burst_t + offset_s[sel]).mean())
        q_s = read_sigma / (g_mean * math.sqrt(log_factor)) if g_mean > 0 else math.nan
        # drift exponents per device, the fit noise taken out of their spread
        nu, nu_var = nu_all[sel], nu_var_all[sel]
        nu_std = math.sqrt(max(float(np.nanvar(nu)) - float(np.nanmean(nu_var)), 0.0))
        levels.append(LevelFit(float(level), count, sigma_prog, read_sigma, q_s,
                               float(np.nanmean(nu)), nu_std))
    faults = fit_faults(target, prog.conductance_us, prog.converged,
                        float(spec.get("program", {}).get("tolerance_abs_us", 0.5)),
                        float(spec.get("program", {}).get("tolerance_rel", 0.04)), prior)
    return FitResult(_with_faults(_calibration(levels, prior), faults), levels, burst_t,
                     faults)


def _range(values: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """(low, high) of a uniform distribution from its samples (the unbiased ends)."""
    if values.size < 2:
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) / (values.size - 1)
    return max(lo - pad, 0.0), hi + pad


def fit_faults(target_us: npt.ArrayLike, verify_us: npt.ArrayLike, converged: npt.ArrayLike,
               tolerance_abs_us: float, tolerance_rel: float,
               prior: PCMCalibration) -> FaultFit:
    """Count the faulty devices of a characterization from its programming result (final
    verify readings, converged flags; the verify window it used)."""
    t = np.asarray(target_us, dtype=np.float64)
    g = np.asarray(verify_us, dtype=np.float64)
    failed = ~np.asarray(converged, dtype=np.bool_)
    g_max = prior.g_max_us
    window = tolerance_abs_us + tolerance_rel * t
    # stuck RESET: a clearly non-zero target, the cell still at the RESET level
    among = t >= 0.2 * g_max
    stuck_reset = among & failed & (g < min(1.0, 0.2 * g_max))
    # stuck SET: a low target, the cell far above it and high in the range
    low = t <= 0.4 * g_max
    stuck_set = low & failed & (g >= np.maximum(t + window + 0.2 * g_max, 0.6 * g_max))
    # weak: above the RESET level but well short of a target its neighbours reached
    short = failed & (g >= min(1.0, 0.2 * g_max)) & (g < t - 2 * window)
    ceiling = _range(g[short])
    top = ceiling[1] if ceiling is not None else -math.inf
    # every weak device fails at a level above its ceiling: count only there
    levels_above = (t - 2 * window > top) if ceiling is not None else t >= t.max()
    weak = short & levels_above
    return FaultFit((int(stuck_reset.sum()), int(among.sum())),
                    (int(stuck_set.sum()), int(low.sum())),
                    (int(weak.sum()), int(levels_above.sum())),
                    _range(g[stuck_set]), ceiling)


def _with_faults(cal: PCMCalibration, faults: FaultFit) -> PCMCalibration:
    update: dict[str, object] = {}
    for name, counted in (("stuck_reset_rate", faults.stuck_reset),
                          ("stuck_set_rate", faults.stuck_set), ("weak_rate", faults.weak)):
        if counted[1]:
            update[name] = FaultFit.rate(counted)
    if faults.stuck_set_range_us is not None:
        update["stuck_set_range_us"] = faults.stuck_set_range_us
    if faults.weak_ceiling_range_us is not None:
        update["weak_ceiling_range_us"] = faults.weak_ceiling_range_us
    return PCMCalibration.model_validate({**cal.model_dump(), **update})


def _calibration(levels: list[LevelFit], prior: PCMCalibration) -> PCMCalibration:
    g_max = prior.g_max_us
    lv = [lv for lv in levels if lv.target_us > 0]
    if len(lv) < 3:
        raise SchemaError(f"the fit needs at least 3 non-zero levels, got {len(lv)}")
    g = np.array([lv.target_us for lv in levels]) / g_max
    sig = np.array([lv.sigma_prog_us for lv in levels])
    counts = np.array([lv.cells for lv in levels], dtype=np.float64)
    # relative errors count alike at every level: the spread at 2.5 µS matters as much,
    # relatively, as at 22.5 µS
    c = _wls(g, sig, counts / np.maximum(sig, 1e-3) ** 2, 2)
    gn = np.array([lv.target_us for lv in lv]) / g_max
    cn = np.array([lv.cells for lv in lv], dtype=np.float64)
    log_g = np.log(gn)
    mu = fit_clipped_line(log_g, [lv.nu_mean for lv in lv], cn,
                          (*prior.drift_mu_coeffs, *prior.drift_mu_range))
    sd = fit_clipped_line(log_g, [lv.nu_std for lv in lv], cn,
                          (*prior.drift_sigma_coeffs, *prior.drift_sigma_range))
    q = np.array([lv.q_s for lv in lv])
    e = prior.read_noise_exponent
    usable = np.isfinite(q) & (q < 0.9 * prior.read_noise_q_max)
    q_coef = (float(np.exp(np.average(np.log(q[usable]) + e * log_g[usable],
                                      weights=cn[usable])))
              if usable.any() else prior.read_noise_q)
    return prior.model_copy(update={
        "prog_noise_coeffs_us": (float(c[0]), float(c[1]), float(c[2])),
        "drift_mu_coeffs": (mu[0], mu[1]), "drift_mu_range": (max(mu[2], 0.0), mu[3]),
        "drift_sigma_coeffs": (sd[0], sd[1]),
        "drift_sigma_range": (max(sd[2], 0.0), max(sd[3], max(sd[2], 0.0))),
        "read_noise_q": q_coef,
    })
