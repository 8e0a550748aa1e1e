"""pcmlab: program, read and evaluate phase-change-memory crossbar chips.

The names a protocol script or an analysis notebook needs, in one place (imported on
first use, so ``import pcmlab`` stays fast)::

    import pcmlab
    driver = pcmlab.open_driver("mock://?rows=64&cols=64&seed=1")
    config = pcmlab.RunConfig(schedule=pcmlab.ReadoutSchedule(t_end_s=86400, n_readouts=10))
    pcmlab.measure_run(driver, config, "first.h5")
    ds = pcmlab.open_run("first.h5")

See docs/python-api.md.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("pcmlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_API = {
    # chips
    "open_driver": "drivers", "MockDriver": "drivers.mock", "MockChipConfig": "mock_chip",
    "CrossbarDriver": "drivers.base", "ChipInfo": "drivers.base", "ChipGroup": "drivers",
    # protocols
    "program_and_verify": "protocols.program_verify",
    "ProgramVerifyConfig": "protocols.program_verify",
    "ProgramResult": "protocols.program_verify",
    "ReadoutSchedule": "protocols.readout", "run_schedule": "protocols.readout",
    "RunConfig": "protocols.experiment", "TargetSpec": "protocols.experiment",
    "RunOutcome": "protocols.experiment", "measure_run": "protocols.experiment",
    "resume_run": "protocols.experiment", "StopToken": "protocols.interrupt",
    "deploy_network": "protocols.deploy", "DeployConfig": "protocols.deploy",
    "evaluate_file": "protocols.deploy",
    "chip_accuracy": "protocols.chip_inference", "ChipInTheLoop": "protocols.chip_inference",
    # networks
    "AnalogEvaluator": "pcmlab.evaluator", "Periphery": "pcmlab.evaluator",
    "NoiseSwitches": "pcmlab.evaluator", "PCMModel": "pcmlab.pcm_model",
    "PCMCalibration": "pcmlab.pcm_model",
    # files and analysis
    "RunReader": "pcmlab.store", "RunWriter": "pcmlab.store", "open_run": "pcmlab.dataset",
    "level_convergence": "pcmlab.dataset", "level_drift": "pcmlab.dataset",
    "drift_exponents": "pcmlab.dataset", "accuracy_over_time": "pcmlab.dataset",
    "group_levels": "pcmlab.analysis",
    # the run catalog
    "runs": "pcmlab.catalog", "open_catalog": "pcmlab.catalog", "Catalog": "pcmlab.catalog",
    "cell_history": "pcmlab.catalog.history",
    # simulation sweeps
    "SweepConfig": "pcmlab.sweep", "load_sweep": "pcmlab.sweep", "run_sweep": "pcmlab.sweep",
    "open_sweep": "pcmlab.sweep",
    # the bridge to IBM aihwkit (docs/aihwkit.md)
    "to_aihwkit": "pcmlab.bridge.aihwkit", "write_aihwkit_module": "pcmlab.bridge.aihwkit",
    "from_aihwkit": "pcmlab.bridge.aihwkit_checkpoint",
    "read_fusion_csv": "pcmlab.bridge.fusion", "write_fusion_csv": "pcmlab.bridge.fusion",
    "fusion_import_torch": "pcmlab.bridge.fusion",
    # configuration files and errors
    "load_model": "pcmlab.config", "save_model": "pcmlab.config",
    "PcmlabError": "pcmlab.errors", "ConfigError": "pcmlab.errors",
    "LimitError": "pcmlab.errors", "TransportError": "pcmlab.errors",
    "DeviceError": "pcmlab.errors", "SchemaError": "pcmlab.errors",
    "CatalogError": "pcmlab.errors", "CatalogUnavailableError": "pcmlab.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pcmlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
