"""Analog layers: the one home of the crossbar forward pass (periphery, MAC, drift
compensation) for every evaluation mode and for hardware-aware training."""

from pcmlab.analog.convert import (
    AnalogNetwork,
    LayerReport,
    convert_to_analog,
    crossbar_parameters,
    fingerprint,
    fold_batchnorm,
    unfold_batchnorm,
)
from pcmlab.analog.layers import AnalogConv, AnalogLinear, AnalogMatrix, AnalogState
from pcmlab.analog.periphery import LayerRanges, Periphery, quantize, quantize_learned

__all__ = [
    "AnalogConv",
    "AnalogLinear",
    "AnalogMatrix",
    "AnalogNetwork",
    "AnalogState",
    "LayerRanges",
    "LayerReport",
    "Periphery",
    "convert_to_analog",
    "crossbar_parameters",
    "fingerprint",
    "fold_batchnorm",
    "quantize",
    "quantize_learned",
    "unfold_batchnorm",
]
