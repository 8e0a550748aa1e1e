"""pcmlab's calibrated PCM statistics as an aihwkit noise model.

This file needs only torch and aihwkit, never pcmlab: ``pcmlab fit --aihwkit FILE.py``
writes it out with a fitted chip's constants in ``PARAMS`` so that an aihwkit user can
``import`` it on a machine without pcmlab. ``pcmlab.to_aihwkit`` uses the same class.

Differences from aihwkit's own ``PCMLikeNoiseModel`` (whose formulas are the defaults
here), all to follow pcmlab's statistical model exactly:

- the programming-noise polynomial is clipped at 0 as pcmlab's is;
- every constant (programming-noise polynomial, drift-exponent lines and their clips,
  1/f amplitude q / g^e and its cap, t0, t_r) comes from ``PARAMS``, not from code;
- the 1/f amplitude Q_s is a function of the *target* conductance (pcmlab, Joshi 2020),
  not of the programmed one, so it is drawn with the drift exponent at programming and
  carried beside it in the drift parameters (shape ``(2, *g.shape)``: nu, Q_s);
- times: aihwkit's ``t_inference`` counts from t0 (its formulas use t = t_inference + t0);
  pcmlab's time ``t_s`` counts from the end of programming. pcmlab at ``t_s`` is aihwkit at
  ``t_inference = t_s - t0_s`` (``aihwkit_time``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel

# The defaults are pcmlab's (and aihwkit's) constants: Nandakumar 2019, Joshi 2020.
PARAMS: dict[str, Any] = {
    "g_max_us": 25.0,
    "t0_s": 20.0,
    "prog_noise_coeffs_us": [0.26348, 1.9650, -1.1731],
    "drift_mu_coeffs": [-0.0155, 0.0244],
    "drift_mu_range": [0.049, 0.1],
    "drift_sigma_coeffs": [-0.0125, -0.0059],
    "drift_sigma_range": [0.008, 0.045],
    "read_noise_q": 0.0088,
    "read_noise_exponent": 0.65,
    "read_noise_q_max": 0.2,
    "t_read_s": 250e-9,
}

_G_REL_FLOOR = 1e-7  # the same floor pcmlab uses inside logarithms and powers


def aihwkit_time(t_s: float, params: dict[str, Any] | None = None) -> float:
    """aihwkit's ``t_inference`` for pcmlab's time since programming ``t_s`` (s)."""
    t0 = float((params or PARAMS)["t0_s"])
    if t_s < t0:
        raise ValueError(f"t_s = {t_s} s: aihwkit models times from t0 = {t0} s on")
    return float(t_s) - t0


class CalibratedPCMNoiseModel(PCMLikeNoiseModel):
    """aihwkit's PCM noise model with every constant from a pcmlab calibration."""

    def __init__(self, params: dict[str, Any] | None = None,
                 g_converter: Any = None, prog_noise_scale: float = 1.0,
                 read_noise_scale: float = 1.0, drift_scale: float = 1.0) -> None:
        p = {**PARAMS, **(params or {})}
        g_max = float(p["g_max_us"])
        super().__init__(
            prog_coeff=[float(c) for c in p["prog_noise_coeffs_us"]],
            g_converter=g_converter or SinglePairConductanceConverter(g_max=g_max),
            g_max=g_max, t_read=float(p["t_read_s"]), t_0=float(p["t0_s"]),
            prog_noise_scale=prog_noise_scale, read_noise_scale=read_noise_scale,
            drift_scale=drift_scale)
        # pcmlab's polynomial is in g_T = G / G_max of its own G_max
        self.prog_coeff_g_max_reference = g_max
        self.params = p

    @torch.no_grad()
    def apply_programming_noise_to_conductance(self, g_target: torch.Tensor) -> torch.Tensor:
        """G_T + sigma_prog(G_T) N(0, 1), sigma_prog = max(c0 + c1 g + c2 g^2, 0) as pcmlab
        has it (aihwkit's own polynomial is not clipped), never negative."""
        g = g_target / float(self.params["g_max_us"])
        c0, c1, c2 = (float(c) for c in self.params["prog_noise_coeffs_us"])
        sigma = (c0 + c1 * g + c2 * g * g).clamp(min=0.0) * self.prog_noise_scale
        return (g_target + sigma * torch.randn_like(g_target)).clamp(min=0.0)

    def _g_rel(self, g: torch.Tensor) -> torch.Tensor:
        return (g.abs() / float(self.params["g_max_us"])).clamp(min=_G_REL_FLOOR)

    @torch.no_grad()
    def generate_drift_coefficients(self, g_target: torch.Tensor) -> torch.Tensor:
        """(nu, Q_s) per device: nu ~ |N(mu_nu(G_T), sigma_nu(G_T))|, Q_s(G_T)."""
        p = self.params
        log_g = torch.log(self._g_rel(g_target))
        (ma, mb), (mlo, mhi) = p["drift_mu_coeffs"], p["drift_mu_range"]
        (sa, sb), (slo, shi) = p["drift_sigma_coeffs"], p["drift_sigma_range"]
        mu = (ma * log_g + mb).clamp(min=mlo, max=mhi)
        sigma = (sa * log_g + sb).clamp(min=slo, max=shi)
        nu = (mu + sigma * torch.randn_like(mu)).abs() * self.drift_scale
        q_s = (p["read_noise_q"] / self._g_rel(g_target) ** p["read_noise_exponent"]
               ).clamp(max=p["read_noise_q_max"])
        return torch.stack([nu, q_s])

    @torch.no_grad()
    def apply_drift_noise_to_conductance(self, g_prog: torch.Tensor,
                                         drift_noise_param: torch.Tensor,
                                         t_inference: float) -> torch.Tensor:
        """G(t) = G_prog (t/t0)^-nu plus 1/f noise G(t) Q_s sqrt(ln((t + t_r)/(2 t_r))),
        with t = t_inference + t0; never negative."""
        nu, q_s = drift_noise_param[0], drift_noise_param[1]
        t = float(t_inference) + self.t_0
        g = g_prog * (t / self.t_0) ** (-nu) if t > self.t_0 else g_prog.clone()
        log_factor = max(math.log((t + self.t_read) / (2 * self.t_read)), 0.0)
        sigma = g.abs() * q_s * (self.read_noise_scale * math.sqrt(log_factor))
        return (g + sigma * torch.randn_like(g)).clamp(min=0.0)


def rpu_config(params: dict[str, Any] | None = None, *, drift_compensation: bool = True,
               perfect_periphery: bool = False) -> Any:
    """An aihwkit ``TorchInferenceRPUConfig`` with this noise model (aihwkit's torch tile;
    its C++ tile does not load beside every torch build). ``perfect_periphery``: no
    DAC/ADC quantization or output noise in aihwkit's forward (the weights still carry
    programming noise, drift and read noise)."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    config = TorchInferenceRPUConfig()
    config.noise_model = CalibratedPCMNoiseModel(params)
    config.drift_compensation = GlobalDriftCompensation() if drift_compensation else None
    if perfect_periphery:
        config.forward.is_perfect = True
    return config
