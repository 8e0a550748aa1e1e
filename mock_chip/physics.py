"""Pulse-level physics of doped-GST mushroom PCM devices (see DESIGN.md, "mock chip").

Nothing here knows about sockets, clocks or limits: arrays of devices and what a SET or
RESET pulse does to them. Conductances in µS, currents in µA, times in seconds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from pcmlab.config import StrictModel
from pcmlab.pcm_model import OK, STUCK_RESET, STUCK_SET, PCMCalibration, PCMModel

F32 = npt.NDArray[np.float32]
Index = slice | npt.NDArray[np.uint32]

_RELAX, _NU = 1, 2  # bits of DeviceArray._pending: drawn/computed at the first read needing it
_RATES = PCMCalibration()  # the fault rates' one home is the PCM model's constants


def select(idx: Index, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """The devices of ``idx`` (a slice or an index array) where ``mask`` is true."""
    if isinstance(idx, slice):
        return np.flatnonzero(mask) + (idx.start or 0)
    return idx[mask]


class DevicePhysics(StrictModel):
    """Pulse-level constants of the mock devices (DESIGN.md, values chosen to meet the
    calibration target of the statistical model after program-and-verify)."""

    g_sat_median_us: float = Field(32.0, gt=0, description="median saturation conductance")
    g_sat_log_sigma: float = Field(0.1, ge=0, description="lognormal spread of G_sat")
    set_threshold_mean_ua: float = Field(50.0, gt=0)
    set_threshold_std_ua: float = Field(5.0, ge=0)
    set_current_scale_ua: float = Field(60.0, gt=0, description="G_inf(I) saturation scale")
    set_fraction: float = Field(0.5, gt=0, le=1, description="fraction of the way to G_inf")
    set_noise_rel: float = Field(0.15, ge=0, description="c2c noise relative to the step")
    set_noise_abs_us: float = Field(0.15, ge=0, description="c2c noise floor of a SET step")
    stall_noise_us: float = Field(0.05, ge=0, description="noise when the state is above G_inf")
    melt_onset_mean_ua: float = Field(300.0, gt=0)
    melt_onset_std_ua: float = Field(20.0, ge=0)
    full_reset_ua: float = Field(450.0, gt=0, description="at or above: full RESET")
    partial_reset_max_fraction: float = Field(0.6, ge=0, le=1)
    partial_reset_noise_rel: float = Field(0.1, ge=0)
    reset_level_sigma_us: float = Field(0.26, ge=0, description="full RESET: |N(0, s)|")
    min_read_delay_s: float = Field(1e-3, gt=0, description="reads sooner count as this")
    relaxation_share: float = Field(
        0.6, ge=0, description="post-programming relaxation spread, in units of sigma_prog(G)")

    @model_validator(mode="after")
    def _melt_below_full_reset(self) -> DevicePhysics:
        if self.melt_onset_mean_ua >= self.full_reset_ua:
            raise ValueError(
                f"melt_onset_mean_ua={self.melt_onset_mean_ua} must be below "
                f"full_reset_ua={self.full_reset_ua}"
            )
        return self


class FaultRates(StrictModel):
    """Fractions of faulty devices (defaults: the PCM model's, ``PCMCalibration``)."""

    stuck_reset: float = Field(_RATES.stuck_reset_rate, ge=0, le=1)
    stuck_set: float = Field(_RATES.stuck_set_rate, ge=0, le=1)
    weak: float = Field(_RATES.weak_rate, ge=0, le=1,
                        description="devices whose G_sat is far too low")
    weak_g_sat_fraction: tuple[float, float] = (0.15, 0.6)

    @model_validator(mode="after")
    def _total(self) -> FaultRates:
        total = self.stuck_reset + self.stuck_set + self.weak
        if total > 1:
            raise ValueError(f"fault rates add up to {total}, more than 1")
        lo, hi = self.weak_g_sat_fraction
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"weak_g_sat_fraction=({lo}, {hi}) must satisfy 0 < low <= high <= 1")
        return self

    @classmethod
    def none(cls) -> FaultRates:
        return cls(stuck_reset=0.0, stuck_set=0.0, weak=0.0)

    @classmethod
    def of_calibration(cls, calibration: PCMCalibration) -> FaultRates:
        """The rates a calibration (e.g. one 'pcmlab fit' wrote) gives."""
        return cls(stuck_reset=calibration.stuck_reset_rate,
                   stuck_set=calibration.stuck_set_rate, weak=calibration.weak_rate)


class DeviceArray:
    """Per-device parameters and state of every device of a chip, as flat float32 arrays."""

    def __init__(
        self,
        n_cells: int,
        physics: DevicePhysics,
        faults: FaultRates,
        model: PCMModel,
        rng: np.random.Generator,
    ) -> None:
        self.physics = physics
        self.model = model
        p = physics
        n = n_cells
        f32 = np.float32
        self.g_sat_us = (p.g_sat_median_us * np.exp(p.g_sat_log_sigma * rng.standard_normal(n)))
        self.g_sat_us = self.g_sat_us.astype(f32)
        self.i_th_ua = np.maximum(
            rng.normal(p.set_threshold_mean_ua, p.set_threshold_std_ua, n), 1.0).astype(f32)
        melt = rng.normal(p.melt_onset_mean_ua, p.melt_onset_std_ua, n)
        self.i_melt_ua = np.clip(melt, self.i_th_ua + 20.0, p.full_reset_ua - 10.0).astype(f32)

        self.fault = np.zeros(n, dtype=np.uint8)
        u = rng.random(n)
        self.fault[u < faults.stuck_reset] = STUCK_RESET
        self.fault[(u >= faults.stuck_reset) & (u < faults.stuck_reset + faults.stuck_set)] = (
            STUCK_SET
        )
        weak_lo = faults.stuck_reset + faults.stuck_set
        weak = (u >= weak_lo) & (u < weak_lo + faults.weak)
        lo, hi = faults.weak_g_sat_fraction
        self.g_sat_us[weak] *= rng.uniform(lo, hi, int(weak.sum())).astype(f32)
        self.weak = weak
        self.ok = self.fault == OK

        # As fabricated: RESET state; stuck-SET devices sit near saturation.
        self.g_prog_us = np.abs(p.reset_level_sigma_us * rng.standard_normal(n)).astype(f32)
        stuck_set = self.fault == STUCK_SET
        self.g_prog_us[stuck_set] = (
            self.g_sat_us[stuck_set] * rng.uniform(0.7, 1.0, int(stuck_set.sum()))
        ).astype(f32)
        self.t_prog_s = np.zeros(n, dtype=np.float64)
        # A device's drift exponent belongs to its amorphous plug: the standard-normal
        # deviate behind nu is drawn anew at every melt-quench (RESET) and kept through
        # partial SETs, which grow crystal into the same plug.
        self.nu_deviate = rng.standard_normal(n, dtype=f32)
        # Two things are computed only when a read first needs them, after each effective
        # pulse: the post-programming relaxation deviate (drawn by the first read past the
        # minimum read delay) and nu, a function of the state the pulse left and of the
        # deviate (after t0). So pulse-and-verify loops pay nothing for them, and a pulse
        # marks both pending in one byte per device. Q_s is needed by every read and is
        # kept up to date.
        self._nu = np.zeros(n, dtype=f32)
        self._relax = np.zeros(n, dtype=f32)
        self._pending = np.full(n, _RELAX | _NU, dtype=np.uint8)
        self.q_s = model.device_q_s(self.g_prog_us)

    @property
    def n_cells(self) -> int:
        return int(self.g_prog_us.size)

    # -- state -----------------------------------------------------------------------------
    @property
    def nu(self) -> F32:
        """Every device's drift exponent (those not computed yet are computed now)."""
        self._nu_of(np.flatnonzero(self._pending & _NU))
        return self._nu

    @property
    def relax_deviate(self) -> F32:
        """Every device's relaxation deviate; NaN where not drawn since its last pulse."""
        out = self._relax.copy()
        out[(self._pending & _RELAX) != 0] = np.nan
        return out

    def _nu_of(self, sel: npt.NDArray[np.intp]) -> F32:
        """nu of the devices ``sel``, computing (and keeping) those not computed yet."""
        nu = self._nu[sel]
        missing = (self._pending[sel] & _NU) != 0
        if missing.any():
            fill = sel[missing]
            nu[missing] = self.model.device_nu(self.g_prog_us[fill], self.nu_deviate[fill])
            self._nu[fill] = nu[missing]
            self._pending[fill] &= np.uint8(~_NU & 0xFF)
        return nu

    def young(self, idx: Index, t_s: float) -> bool:
        """No device of ``idx`` has aged past the minimum read delay (nor t0) at ``t_s``:
        each is in its programmed state and its read noise is white. Programming times
        never lie below the chip's start, and rounding is monotone, so the oldest age is
        at most t and exactly t - min(t_prog)."""
        young_s = min(self.physics.min_read_delay_s, self.model.calibration.t0_s)
        if t_s <= young_s:
            return True
        t_prog = self.t_prog_s[idx]
        return t_prog.size == 0 or t_s - float(t_prog.min()) <= young_s

    def conductance_us(self, idx: Index, t_s: float, rng: np.random.Generator,
                       age_s: npt.NDArray[np.float64] | None = None) -> F32:
        """Noiseless conductance now (a copy): the programmed state, its relaxation toward
        a random offset between the minimum read delay and t0, then drift (age/t0)^(-nu).

        The relaxation (structural relaxation right after melt-quench or partial SET,
        Le Gallo et al., J. Appl. Phys. 124, 2018) is why a verify read taken microseconds
        after the pulse is tighter than the spread seen at t0: its size is
        ``relaxation_share * sigma_prog(G)``, growing linearly in log time.
        """
        g = np.array(self.g_prog_us[idx], dtype=np.float32, copy=True)
        if age_s is None:
            if self.young(idx, t_s):
                return g
            age = t_s - self.t_prog_s[idx]
        else:
            age = age_s
        t0 = self.model.calibration.t0_s
        d = self.physics.min_read_delay_s
        relaxing = age > d
        if self.physics.relaxation_share > 0 and relaxing.any():
            every = bool(relaxing.all())  # then whole arrays, not masked copies
            sel = idx if every else select(idx, relaxing)
            r = self._relax[sel]  # a view when sel is a slice
            pending = self._pending[sel]
            missing = (pending & _RELAX) != 0
            if missing.any():
                r[missing] = rng.standard_normal(int(missing.sum()), dtype=np.float32)
                if isinstance(sel, slice):
                    pending &= np.uint8(~_RELAX & 0xFF)  # a view: clears them in place
                else:
                    self._relax[sel[missing]] = r[missing]
                    self._pending[sel[missing]] &= np.uint8(~_RELAX & 0xFF)
            age_rel = age if every else age[relaxing]
            h = np.log(np.minimum(age_rel, t0) / d) / np.log(t0 / d)
            g_rel = g if every else g[relaxing]
            sigma = self.model.prog_noise_sigma_us(g_rel).astype(np.float32)
            g_rel += np.float32(self.physics.relaxation_share) * sigma * r * h.astype(np.float32)
            if every:
                np.maximum(g, np.float32(0.0), out=g)
            else:
                g[relaxing] = np.maximum(g_rel, np.float32(0.0))
        late = age > t0
        if late.any():
            nu = self._nu_of(select(idx, late))
            g[late] *= (age[late] / t0).astype(np.float32) ** -nu
        return g

    def _restart(
        self, idx: Index, g_new: F32, effective: npt.NDArray[np.bool_], t_s: float
    ) -> None:
        """An effective pulse leaves state g_new (overwritten) and restarts drift and 1/f
        noise."""
        f32 = np.float32
        if effective.all():
            # never negative (clip with both bounds is maximum, in one fast pass)
            g_prog = self.g_prog_us[idx] if isinstance(idx, slice) else g_new
            np.clip(g_new, f32(0.0), f32(np.inf), out=g_prog)
            if g_prog is g_new:
                self.g_prog_us[idx] = g_new
            self._pending[idx] = _RELAX | _NU
            self.t_prog_s[idx] = t_s
            if isinstance(idx, slice):
                self.model.device_q_s(g_prog, out=self.q_s[idx])
            else:
                self.q_s[idx] = self.model.device_q_s(g_prog)
            return
        np.clip(g_new, f32(0.0), f32(np.inf), out=g_new)
        if isinstance(idx, slice):  # masked copies into views: no gather, no scatter
            # putmask: the same copies, without copyto(where=)'s branch per element
            np.putmask(self._pending[idx], effective, _RELAX | _NU)
            np.putmask(self.g_prog_us[idx], effective, g_new)
            np.putmask(self.t_prog_s[idx], effective, t_s)
            np.putmask(self.q_s[idx], effective, self.model.device_q_s(g_new))
        else:
            sel = idx[effective]
            g_eff = g_new[effective]
            self._pending[sel] = _RELAX | _NU
            self.g_prog_us[sel] = g_eff
            self.t_prog_s[sel] = t_s
            self.q_s[sel] = self.model.device_q_s(g_eff)

    # -- pulses (idx must not repeat a device) ---------------------------------------------
    def apply_set(self, idx: Index, amplitude_ua: F32, t_s: float, rng: np.random.Generator
                  ) -> None:
        """Partial SET: move a fraction of the way toward G_inf(I) = G_sat(1 - e^-(I-I_th)/s).

        A state already above G_inf(I) barely moves. Written with in-place float32 ops:
        this is the mock chip's hot path.
        """
        p = self.physics
        f32 = np.float32
        i_th = self.i_th_ua[idx]
        effective = amplitude_ua > i_th
        effective &= self.ok[idx]
        if not effective.any():
            return
        # the state now; young devices are in their programmed state (read, not copied)
        g = (self.g_prog_us[idx] if self.young(idx, t_s)
             else self.conductance_us(idx, t_s, rng))
        delta = i_th - amplitude_ua
        delta *= f32(1.0 / p.set_current_scale_ua)
        np.expm1(delta, out=delta)
        delta *= self.g_sat_us[idx]  # -G_inf(I)
        delta += g
        np.negative(delta, out=delta)  # G_inf(I) - G (rounding is symmetric: bit for bit)
        rising = delta > 0
        np.clip(delta, f32(0.0), f32(np.inf), out=delta)
        delta *= f32(p.set_fraction)  # the step
        # cycle-to-cycle noise: a share of the step plus a floor (smaller when stalled)
        sigma = delta * f32(p.set_noise_rel)
        floor = f32(p.set_noise_abs_us - p.stall_noise_us)
        if p.stall_noise_us > 0:
            # branch-free, the same bits: + floor where rising, + 0.0 elsewhere, which
            # changes nothing but the sign of a zero, and the stall floor (> 0) added next
            # gives the same sum for either zero (add(where=) is ~50x slower here)
            sigma += rising * floor
        else:
            np.add(sigma, floor, out=sigma, where=rising)
        sigma += f32(p.stall_noise_us)
        sigma *= rng.standard_normal(delta.shape, dtype=np.float32)
        delta += g  # the new state: G + step + noise
        delta += sigma
        self._restart(idx, delta, effective, t_s)

    def apply_reset(self, idx: Index, amplitude_ua: F32, t_s: float, rng: np.random.Generator
                    ) -> None:
        """Melt-quench: nothing below the melting onset; a partial RESET whose level falls
        with I up to full_reset_ua; at or above it back to the RESET level. The previous
        state is erased."""
        p = self.physics
        f32 = np.float32
        i_melt = self.i_melt_ua[idx]
        effective = amplitude_ua >= i_melt
        effective &= self.ok[idx]
        if not effective.any():
            return
        g_sat = self.g_sat_us[idx]
        frac = (amplitude_ua - i_melt) / (f32(p.full_reset_ua) - i_melt)
        np.clip(frac, f32(0.0), f32(1.0), out=frac)
        level = f32(p.partial_reset_max_fraction) * g_sat * (f32(1.0) - frac)
        noise = rng.standard_normal((2, *g_sat.shape), dtype=np.float32)
        level *= f32(1.0) + f32(p.partial_reset_noise_rel) * noise[0]
        level += f32(p.reset_level_sigma_us) * noise[0]
        np.abs(level, out=level)
        # a new amorphous plug: a new drift-exponent deviate
        if isinstance(idx, slice):
            np.putmask(self.nu_deviate[idx], effective, noise[1])
        else:
            self.nu_deviate[idx[effective]] = noise[1][effective]
        self._restart(idx, level, effective, t_s)
