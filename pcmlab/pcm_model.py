"""The calibrated statistical PCM model: the only home of its constants.

Doped-GST mushroom PCM as characterised by Nandakumar et al., "Phase-change memory
models for deep learning training and inference", ICECS 2019, and Joshi et al.,
"Accurate deep neural network inference using computational phase-change memory",
Nat. Commun. 11, 2473 (2020); the same formulas as IBM aihwkit's ``PCMLikeNoiseModel``.
Conductances in µS, times in seconds since the end of programming.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from pcmlab.config import StrictModel

FloatArray = npt.NDArray[np.floating]
ArrayLike = npt.ArrayLike

def _as_float(x: ArrayLike) -> FloatArray:
    arr = np.asarray(x)
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


# The accuracy-vs-time points (s after programming) the AnalogNets paper and DESIGN.md use.
YEAR_S = 365 * 86400.0
ACCURACY_TIMES_S = (25.0, 3600.0, 86400.0, 30 * 86400.0, YEAR_S)
ACCURACY_TIME_LABELS = ("25 s", "1 h", "1 day", "1 month", "1 year")

# Smallest relative conductance used inside logarithms and powers (aihwkit uses the same).
_G_REL_FLOOR = 1e-7

# Kinds of device (``PCMModel.sample_faults``; the mock chip uses the same codes).
OK, STUCK_RESET, STUCK_SET, WEAK = 0, 1, 2, 3


class PCMCalibration(StrictModel):
    """Constants of the statistical PCM model (defaults: Joshi et al. 2020, Nandakumar 2019).

    A lab that fitted its own chip (``pcmlab fit``) writes a file of this model.
    """

    g_max_us: float = Field(25.0, gt=0, le=1000, description="G_max that g_T is relative to")
    t0_s: float = Field(20.0, gt=0, description="drift reference time after programming")
    # sigma_prog(g_T) = c0 + c1 g_T + c2 g_T^2 (µS), clipped at 0 — Nandakumar 2019, Fig. 3
    prog_noise_coeffs_us: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    # mu_nu = clip(a ln g_T + b, lo, hi) — Joshi 2020, Methods
    drift_mu_coeffs: tuple[float, float] = (-0.0155, 0.0244)
    drift_mu_range: tuple[float, float] = (0.049, 0.1)
    # sigma_nu = clip(a ln g_T + b, lo, hi)
    drift_sigma_coeffs: tuple[float, float] = (-0.0125, -0.0059)
    drift_sigma_range: tuple[float, float] = (0.008, 0.045)
    # Q_s = min(q / g_T^e, q_max); sigma_read = G(t) Q_s sqrt(ln((t + t_r) / (2 t_r)))
    read_noise_q: float = Field(0.0088, ge=0)
    read_noise_exponent: float = Field(0.65, ge=0)
    read_noise_q_max: float = Field(0.2, ge=0)
    t_read_s: float = Field(250e-9, gt=0, description="read pulse duration t_r")
    # Faulty devices, as shares of all devices (DESIGN.md: about 0.3 % stuck-RESET, 0.1 %
    # stuck-SET, 0.5 % weak; 'pcmlab fit' measures a chip's own). A stuck-RESET device reads
    # the RESET state |N(0, sigma_prog(0))|; a stuck-SET one a conductance uniform in
    # stuck_set_range_us; a weak one reaches no more than a ceiling uniform in
    # weak_ceiling_range_us. The default ranges are what the mock chip's faulty devices read
    # (stuck-SET 0.7..1 of G_sat ~ 32 µS; weak 0.15..0.6 of G_sat at the 250 µA SET limit).
    # A calibration file written before these fields existed takes these defaults.
    stuck_reset_rate: float = Field(0.003, ge=0, le=1, description="devices stuck RESET")
    stuck_set_rate: float = Field(0.001, ge=0, le=1, description="devices stuck SET")
    stuck_set_range_us: tuple[float, float] = (22.4, 32.0)
    weak_rate: float = Field(0.005, ge=0, le=1, description="devices with a low ceiling")
    weak_ceiling_range_us: tuple[float, float] = (4.6, 18.5)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> PCMCalibration:
        for name in ("drift_mu_range", "drift_sigma_range", "stuck_set_range_us",
                     "weak_ceiling_range_us"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}=({lo}, {hi}): need 0 <= low <= high")
        total = self.stuck_reset_rate + self.stuck_set_rate + self.weak_rate
        if total > 1:
            raise ValueError(f"fault rates add up to {total}, more than 1")
        return self

    @property
    def fault_rate(self) -> float:
        """Share of faulty devices of any kind."""
        return self.stuck_reset_rate + self.stuck_set_rate + self.weak_rate

    def without_faults(self) -> PCMCalibration:
        """The same constants for a chip without faulty devices."""
        return self.model_copy(update={"stuck_reset_rate": 0.0, "stuck_set_rate": 0.0,
                                       "weak_rate": 0.0})


class PCMModel:
    """Vectorized sampling and formulas of the statistical model.

    Every random method takes an explicit ``numpy.random.Generator``.
    """

    def __init__(self, calibration: PCMCalibration | None = None) -> None:
        self.calibration = calibration or PCMCalibration()

    # -- helpers ---------------------------------------------------------------------------
    def relative(self, g_us: ArrayLike) -> FloatArray:
        """g_T = G / G_max, floored at a tiny positive value for logs and powers.

        float32 input stays float32 (the mock chip's hot path); anything else is float64.
        """
        g = _as_float(g_us)
        rel = g * g.dtype.type(1.0 / self.calibration.g_max_us)
        if not isinstance(rel, np.ndarray):  # a scalar in, a scalar out
            return np.maximum(rel, _G_REL_FLOOR)
        # clip with both bounds is np.maximum here, in a faster pass
        return np.clip(rel, _G_REL_FLOOR, np.inf, out=rel)

    # -- programming noise -----------------------------------------------------------------
    def prog_noise_sigma_us(self, g_target_us: ArrayLike) -> FloatArray:
        """sigma_prog(G_T) in µS."""
        c0, c1, c2 = self.calibration.prog_noise_coeffs_us
        g = np.asarray(g_target_us, dtype=np.float64) / self.calibration.g_max_us
        return np.maximum(c0 + c1 * g + c2 * g * g, 0.0)

    def program(self, g_target_us: ArrayLike, rng: np.random.Generator, *,
                sigma_us: FloatArray | None = None) -> FloatArray:
        """Programmed conductances: target plus programming noise, never negative.
        ``sigma_us``: ``prog_noise_sigma_us(g_target_us)`` when the caller has it already
        (a Monte Carlo programs the same targets once per run)."""
        g_t = np.asarray(g_target_us, dtype=np.float64)
        sigma = self.prog_noise_sigma_us(g_t) if sigma_us is None else sigma_us
        # g_t + sigma * z, in place in the draw (the same arithmetic: * and + commute)
        g = rng.standard_normal(g_t.shape)
        if not isinstance(g, np.ndarray):  # a scalar target
            return np.maximum(g_t + sigma * g, 0.0)
        g *= sigma
        g += g_t
        return np.maximum(g, 0.0, out=g)

    # -- faulty devices --------------------------------------------------------------------
    def sample_faults(self, n: int, rng: np.random.Generator
                      ) -> tuple[npt.NDArray[np.uint8], FloatArray]:
        """Which of n devices are faulty (OK, STUCK_RESET, STUCK_SET, WEAK) and, per device,
        the conductance it is stuck at or (weak) its ceiling, µS (0 for good devices)."""
        c = self.calibration
        u = rng.random(n)
        kind = np.zeros(n, dtype=np.uint8)
        edges = np.cumsum([c.stuck_reset_rate, c.stuck_set_rate, c.weak_rate])
        kind[u < edges[0]] = STUCK_RESET
        kind[(u >= edges[0]) & (u < edges[1])] = STUCK_SET
        kind[(u >= edges[1]) & (u < edges[2])] = WEAK
        g = np.zeros(n)
        for k, draw in ((STUCK_RESET, lambda m: np.abs(
                            self.prog_noise_sigma_us(0.0) * rng.standard_normal(m))),
                        (STUCK_SET, lambda m: rng.uniform(*c.stuck_set_range_us, m)),
                        (WEAK, lambda m: rng.uniform(*c.weak_ceiling_range_us, m))):
            sel = kind == k
            if sel.any():
                g[sel] = draw(int(sel.sum()))
        return kind, g

    # -- drift -----------------------------------------------------------------------------
    def drift_nu_mean(self, g_us: ArrayLike) -> FloatArray:
        """Mean drift exponent mu_nu at conductance G."""
        a, b = self.calibration.drift_mu_coeffs
        lo, hi = self.calibration.drift_mu_range
        return np.clip(a * np.log(self.relative(g_us)) + b, lo, hi)

    def drift_nu_std(self, g_us: ArrayLike) -> FloatArray:
        """Spread sigma_nu of the drift exponent at conductance G."""
        a, b = self.calibration.drift_sigma_coeffs
        lo, hi = self.calibration.drift_sigma_range
        return np.clip(a * np.log(self.relative(g_us)) + b, lo, hi)

    def sample_nu(self, g_us: ArrayLike, rng: np.random.Generator) -> FloatArray:
        """Per-device drift exponents nu ~ |N(mu_nu, sigma_nu)|."""
        mu = self.drift_nu_mean(g_us)
        noise = rng.standard_normal(mu.shape, dtype=mu.dtype)
        return np.abs(mu + self.drift_nu_std(g_us) * noise)

    def device_params(
        self, g_us: ArrayLike, nu_deviate: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """(nu, Q_s) for devices just programmed to G: one logarithm serves both.

        ``nu_deviate`` are standard-normal deviates, one per device:
        nu = |mu_nu(G) + sigma_nu(G) * deviate|.
        """
        log_g = np.log(self.relative(g_us))
        nu = self._nu_of_log(log_g, nu_deviate)
        return nu, self._q_s_of_log(log_g)

    def device_nu(self, g_us: ArrayLike, nu_deviate: FloatArray) -> FloatArray:
        """nu alone, exactly as ``device_params`` computes it (the mock chip computes a
        device's nu only when a read needs it: after t0)."""
        return self._nu_of_log(np.log(self.relative(g_us)), nu_deviate)

    def device_q_s(self, g_us: ArrayLike, out: FloatArray | None = None) -> FloatArray:
        """Q_s alone, exactly as ``device_params`` computes it (into ``out`` if given)."""
        rel = self.relative(g_us)
        return self._q_s_of_log(np.log(rel, out=rel), out)

    def _nu_of_log(self, log_g: FloatArray, nu_deviate: FloatArray) -> FloatArray:
        c = self.calibration
        (ma, mb), (mlo, mhi) = c.drift_mu_coeffs, c.drift_mu_range
        (sa, sb), (slo, shi) = c.drift_sigma_coeffs, c.drift_sigma_range
        nu = np.clip(sa * log_g + sb, slo, shi)  # sigma_nu
        nu *= nu_deviate
        nu += np.clip(ma * log_g + mb, mlo, mhi)  # mu_nu
        return np.abs(nu, out=nu)

    def _q_s_of_log(self, log_g: FloatArray, out: FloatArray | None = None) -> FloatArray:
        """Q_s from ln g_T (overwrites ``log_g``), into ``out`` if given."""
        c = self.calibration
        log_g *= -c.read_noise_exponent
        q_s = np.exp(log_g, out=log_g)
        q_s *= c.read_noise_q
        # clip with both bounds is np.minimum here (Q_s > 0), in a faster pass
        return np.clip(q_s, -np.inf, c.read_noise_q_max, out=q_s if out is None else out)

    def drift(self, g_prog_us: ArrayLike, nu: ArrayLike, t_s: ArrayLike) -> FloatArray:
        """G(t) = G_prog (t / t0)^(-nu), flat before t0."""
        t0 = self.calibration.t0_s
        g, nu_a = np.asarray(g_prog_us), np.asarray(nu)
        if np.ndim(t_s) == 0 and g.dtype == nu_a.dtype == np.float32:
            # one time, float32 in: float32 out (the simulated mode's hot path);
            # exp(-nu ln r) is several times faster than r**-nu
            factor = np.exp(nu_a * np.float32(-np.log(max(float(t_s), t0) / t0)))
            factor *= g
            return factor
        if np.ndim(t_s) == 0:
            factor = np.exp(nu_a.astype(np.float64) * -np.log(max(float(t_s), t0) / t0))
            return g.astype(np.float64) * factor
        ratio = np.maximum(np.asarray(t_s, dtype=np.float64), t0) / t0
        return np.asarray(g_prog_us, dtype=np.float64) * ratio ** (-np.asarray(nu))

    # -- read noise ------------------------------------------------------------------------
    def read_noise_q(self, g_us: ArrayLike) -> FloatArray:
        """Q_s, the 1/f noise amplitude relative to G, at conductance G."""
        c = self.calibration
        return np.minimum(c.read_noise_q / self.relative(g_us) ** c.read_noise_exponent,
                          c.read_noise_q_max)

    def read_noise_log_factor(self, t_s: ArrayLike) -> FloatArray:
        """ln((t + t_r) / (2 t_r)): the 1/f variance integrated over the bandwidth 1/t..1/2t_r."""
        t_r = self.calibration.t_read_s
        return np.log((_as_float(t_s) + t_r) / (2 * t_r))

    def read_noise_sigma_us(
        self, g_drift_us: ArrayLike, g_target_us: ArrayLike, t_s: ArrayLike
    ) -> FloatArray:
        """sigma_read(t) = G_drift(t) Q_s(G_T) sqrt(ln((t + t_r) / (2 t_r)))."""
        log_factor = np.maximum(self.read_noise_log_factor(t_s), 0.0)
        return np.asarray(g_drift_us) * self.read_noise_q(g_target_us) * np.sqrt(log_factor)

    # -- the whole chain -------------------------------------------------------------------
    def simulate(
        self, g_target_us: ArrayLike, t_s: ArrayLike, rng: np.random.Generator
    ) -> FloatArray:
        """Conductances read at each time t (s after programming) for targets G_T.

        Returns shape ``(len(t_s),) + G_T.shape``; one programming and one set of drift
        exponents per device, independent read noise per time. Never negative.
        """
        g_t = np.asarray(g_target_us, dtype=np.float64)
        times = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        g_prog = self.program(g_t, rng)
        nu = self.sample_nu(g_t, rng)
        out = np.empty(times.shape + g_t.shape)
        for i, t in enumerate(times):
            g_drift = self.drift(g_prog, nu, t)
            sigma = self.read_noise_sigma_us(g_drift, g_t, t)
            out[i] = np.maximum(g_drift + sigma * rng.standard_normal(g_t.shape), 0.0)
        return out

    def total_sigma_us(self, g_target_us: ArrayLike, t_s: float) -> FloatArray:
        """Spread of a single read at t around G_T, ignoring drift: sqrt(prog^2 + read^2)."""
        g_t = np.asarray(g_target_us, dtype=np.float64)
        return np.hypot(self.prog_noise_sigma_us(g_t), self.read_noise_sigma_us(g_t, g_t, t_s))


def global_drift_compensation(
    response_t0: ArrayLike, response_t: ArrayLike
) -> float:
    """alpha_GDC = summed |response| at t0 over the same at t (one factor per layer)."""
    denom = float(np.sum(np.abs(response_t)))
    if denom == 0.0:
        return 1.0
    return float(np.sum(np.abs(response_t0))) / denom
