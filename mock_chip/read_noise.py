"""1/f read noise with the right memory: a white part plus Ornstein-Uhlenbeck terms.

The statistical model's variance, sigma^2 ∝ ln((t + t_r) / (2 t_r)), is the 1/f power
integrated from f = 1/t (time since programming) to 1/(2 t_r). Splitting that band by
decades gives one OU process per decade of correlation time tau (equal variance per
decade is what makes a spectrum 1/f), plus white noise for every time scale shorter than
the smallest tau. A decade contributes only once the device has aged past its tau, so
reads a millisecond apart share most of their noise, reads hours apart almost none, and
each single read has exactly the model's variance.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from mock_chip.physics import F32, Index, select


class FlickerNoise:
    """Unit-variance correlated read noise for every device of an array."""

    def __init__(
        self,
        n_cells: int,
        rng: np.random.Generator,
        *,
        t_read_s: float = 250e-9,
        tau_min_s: float = 1e-3,
        tau_max_s: float = 1e8,
        terms_per_decade: int = 1,
    ) -> None:
        n_terms = round(math.log10(tau_max_s / tau_min_s) * terms_per_decade) + 1
        self.tau_s = tau_min_s * 10.0 ** (np.arange(n_terms) / terms_per_decade)
        self.log_tau = np.log(self.tau_s)
        self.band = math.log(10.0) / terms_per_decade
        self.white_var = math.log((tau_min_s + t_read_s) / (2 * t_read_s))
        # Stationary OU states, each advanced lazily and exactly (an OU step over dt composes)
        # only when a read uses it: a term whose decade no device has aged into waits.
        self.z = rng.standard_normal((n_terms, n_cells), dtype=np.float32)
        self.t_last_s = np.zeros((n_terms, n_cells), dtype=np.float64)

    def _advance(self, k: int, idx: Index, t_now_s: float, rng: np.random.Generator) -> None:
        dt = t_now_s - self.t_last_s[k, idx]
        moved = dt > 0
        if not moved.any():
            return
        if not moved.all():
            idx = select(idx, moved)
            dt = dt[moved]
        rho = np.exp(-dt / self.tau_s[k]).astype(np.float32)
        kick = np.sqrt(1.0 - rho * rho) * rng.standard_normal(rho.shape, dtype=np.float32)
        self.z[k, idx] = rho * self.z[k, idx] + kick
        self.t_last_s[k, idx] = t_now_s

    def sample(self, idx: Index, t_now_s: float, age_s: npt.NDArray[np.float64],
               rng: np.random.Generator) -> F32:
        """Noise with unit variance at each device; ``age_s`` is the time since programming
        (already at least tau_min)."""
        n = age_s.shape[0]
        if n == 0 or float(age_s.max()) <= self.tau_s[0]:
            # no device has aged past the shortest correlation time: white noise only
            return rng.standard_normal(n, dtype=np.float32)
        out = np.sqrt(np.float32(self.white_var)) * rng.standard_normal(n, dtype=np.float32)
        total = np.full(n, self.white_var, dtype=np.float64)
        log_age = np.log(age_s)
        oldest = float(log_age.max()) if n else 0.0
        last = len(self.tau_s) - 1
        for k in range(len(self.tau_s)):
            if self.log_tau[k] >= oldest:
                break
            self._advance(k, idx, t_now_s, rng)
            w = np.maximum(log_age - self.log_tau[k], 0.0)
            if k < last:
                w = np.minimum(w, self.band)
            total += w
            out += np.sqrt(w).astype(np.float32) * self.z[k, idx]
        return out / np.sqrt(total).astype(np.float32)
