"""pcmlab's calibrated PCM model into IBM aihwkit.

``to_aihwkit(calibration)`` builds aihwkit objects (a noise model and an inference
configuration) with the same programming noise, drift and read noise as pcmlab's
simulated mode; ``write_aihwkit_module`` writes the same model as a standalone Python
file (torch and aihwkit only) with the calibration's constants in it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcmlab.errors import ConfigError
from pcmlab.pcm_model import PCMCalibration

log = logging.getLogger(__name__)

_NOISE_MODULE = Path(__file__).with_name("aihwkit_noise.py")
INSTALL_HINT = ("aihwkit is not installed: pip install 'pcmlab[aihwkit]' (aihwkit 1.1 with "
                "torchvision pinned to your torch; docs/aihwkit.md says which)")

# What the export cannot carry into aihwkit (docs/aihwkit.md says why and what it does).
NOT_EXPRESSED = (
    "drift compensation reference: aihwkit takes its baseline from the programmed weights "
    "without read noise, at programming; pcmlab from a read at t0 (the summed device "
    "conductances of a layer)",
    "periphery: pcmlab's DAC/ADC ranges and shared ADC gain are not aihwkit IOParameters; "
    "the export sets aihwkit's forward to its defaults, or to perfect with "
    "perfect_periphery=True",
    "faulty devices: the calibration's stuck-RESET, stuck-SET and weak rates (and the pair "
    "compensation a deployment does for them) are left out; aihwkit's conductance converter "
    "draws every device alike. Compare with pcmlab's simulated mode with faults off "
    "(NoiseSwitches(faults=False))",
    "mock-chip physics: pulse-level programming, relaxation and MVM non-idealities are the "
    "mock chip's, not the statistical model's",
    "the partner device: aihwkit's apply_drift_noise converts the programmed (noisy) weights "
    "back to conductances at each drift call, a pair with one device per weight, so the "
    "second device's programming noise, drift and read noise (pcmlab's pair G+ - G-) are "
    "lost; it matters most for small weights",
)


def aihwkit_params(calibration: PCMCalibration | None = None) -> dict[str, Any]:
    """The calibration's constants as the plain dict ``aihwkit_noise.PARAMS`` takes."""
    c = calibration or PCMCalibration()
    return {
        "g_max_us": c.g_max_us, "t0_s": c.t0_s,
        "prog_noise_coeffs_us": list(c.prog_noise_coeffs_us),
        "drift_mu_coeffs": list(c.drift_mu_coeffs), "drift_mu_range": list(c.drift_mu_range),
        "drift_sigma_coeffs": list(c.drift_sigma_coeffs),
        "drift_sigma_range": list(c.drift_sigma_range),
        "read_noise_q": c.read_noise_q, "read_noise_exponent": c.read_noise_exponent,
        "read_noise_q_max": c.read_noise_q_max, "t_read_s": c.t_read_s,
    }


@dataclass
class AihwkitExport:
    """What ``to_aihwkit`` returns: aihwkit objects and what they leave out."""

    noise_model: Any  # aihwkit_noise.CalibratedPCMNoiseModel
    rpu_config: Any  # aihwkit TorchInferenceRPUConfig
    params: dict[str, Any]
    not_expressed: tuple[str, ...] = field(default=NOT_EXPRESSED)

    def t_inference(self, t_s: float) -> float:
        """aihwkit's ``t_inference`` for pcmlab's time since programming ``t_s``."""
        return float(t_s) - float(self.params["t0_s"])


def _noise_module() -> Any:
    try:
        from pcmlab.bridge import aihwkit_noise
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return aihwkit_noise


def to_aihwkit(calibration: PCMCalibration | None = None, *, drift_compensation: bool = True,
               perfect_periphery: bool = False) -> AihwkitExport:
    """aihwkit's noise model and inference configuration for ``calibration`` (default:
    the published constants). ``perfect_periphery``: aihwkit's forward without DAC/ADC
    quantization and output noise."""
    module = _noise_module()
    params = aihwkit_params(calibration)
    config = module.rpu_config(params, drift_compensation=drift_compensation,
                               perfect_periphery=perfect_periphery)
    return AihwkitExport(config.noise_model, config, params)


def aihwkit_module_source(calibration: PCMCalibration | None = None, *,
                          origin: str = "") -> str:
    """The standalone module's text with this calibration's constants in PARAMS."""
    text = _NOISE_MODULE.read_text(encoding="utf-8")
    params = json.dumps(aihwkit_params(calibration), indent=4)
    new, n = re.subn(r"^PARAMS: dict\[str, Any\] = \{.*?^\}\n",
                     lambda _: f"PARAMS: dict[str, Any] = {params}\n", text,
                     count=1, flags=re.S | re.M)
    if n != 1:  # the template lost its PARAMS block: never write a file with defaults
        raise RuntimeError(f"{_NOISE_MODULE}: no PARAMS block to fill")
    head = ("# Written by pcmlab" + (f" from {origin}" if origin else "") + ": the chip's "
            "calibrated PCM statistics for aihwkit.\n# Needs torch and aihwkit only.\n")
    return head + new


def write_aihwkit_module(calibration: PCMCalibration | None, path: str | Path, *,
                         origin: str = "") -> Path:
    """Write the noise model as a Python module (``.py``) or its constants as JSON."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(aihwkit_params(calibration), indent=2) + "\n",
                        encoding="utf-8")
    elif path.suffix == ".py":
        path.write_text(aihwkit_module_source(calibration, origin=origin), encoding="utf-8")
    else:
        raise ConfigError(f"{path}: the aihwkit export is a Python module (.py) or its "
                          "constants as JSON (.json)")
    log.info("wrote the aihwkit noise model to %s", path)
    return path


def aihwkit_simulate(analog_model: Any, x: Any, y: Any, times_s: Any, n_runs: int, *,
                     t0_s: float | None = None, seed: int = 0, batch_size: int = 4096) -> Any:
    """aihwkit's own Monte Carlo of an aihwkit model (accuracy, runs x times): per run
    one programming (``program_analog_weights``), then ``drift_analog_weights`` at each
    of pcmlab's times since programming (aihwkit's ``t_inference = t_s - t0_s``). The
    reference against which pcmlab's simulated mode is checked."""
    import numpy as np
    import torch

    times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    if t0_s is None:  # the model's own noise model's t0 (a fitted one need not be 20 s)
        t0s = {float(t.rpu_config.noise_model.t_0) for t in analog_model.analog_tiles()}
        if len(t0s) != 1:
            raise ConfigError(f"the model's tiles have t0 {sorted(t0s)}: give t0_s")
        t0_s = t0s.pop()
    if n_runs < 1:
        raise ConfigError(f"n_runs = {n_runs}: need at least one run")
    acc = np.empty((n_runs, times.size))
    torch.manual_seed(seed)
    analog_model.eval()
    with torch.no_grad():
        for run in range(n_runs):
            analog_model.program_analog_weights()
            for j, t in enumerate(times):
                analog_model.drift_analog_weights(float(t) - t0_s)
                hits = 0
                for i in range(0, x.shape[0], batch_size):
                    out = analog_model(x[i:i + batch_size])
                    hits += int((out.argmax(dim=1) == y[i:i + batch_size]).sum())
                acc[run, j] = hits / x.shape[0]
    return acc
