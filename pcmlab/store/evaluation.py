"""``/evaluation``: accuracy over time, written once the run's SWMR writer has closed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from pcmlab.errors import SchemaError
from pcmlab.store import schema as S


def write_evaluation(
    path: str | Path, *, measured_time_s: npt.ArrayLike, measured_accuracy: npt.ArrayLike,
    simulated_time_s: npt.ArrayLike | None = None,
    simulated_accuracy: npt.ArrayLike | None = None, ideal_accuracy: float | None = None,
    attrs: dict[str, Any] | None = None, chip: dict[str, Any] | None = None,
) -> None:
    """Write (or replace: it is derived, not measured) the file's ``/evaluation``.

    ``simulated_accuracy`` is runs x times; mean and std are stored beside the runs.
    ``chip``: chip-mode accuracy, column name -> values per time (``chip_<name>``).
    """
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot open for adding the evaluation; is the run still "
                          f"being written? ({exc})") from None
    with f:
        if S.EVALUATION in f:
            del f[S.EVALUATION]
        g = f.create_group(S.EVALUATION)
        g.create_dataset(S.MEASURED_TIME, data=np.asarray(measured_time_s, dtype=np.float64))
        g.create_dataset(S.MEASURED_ACCURACY,
                         data=np.asarray(measured_accuracy, dtype=np.float64))
        if simulated_accuracy is not None and simulated_time_s is not None:
            runs = np.atleast_2d(np.asarray(simulated_accuracy, dtype=np.float64))
            g.create_dataset(S.SIMULATED_TIME,
                             data=np.asarray(simulated_time_s, dtype=np.float64))
            g.create_dataset(S.SIMULATED_RUNS, data=runs)
            g.create_dataset(S.SIMULATED_MEAN, data=runs.mean(axis=0))
            # sample std over the simulated chips (ddof 1), as SimulatedAccuracy.std
            g.create_dataset(S.SIMULATED_STD, data=(runs.std(axis=0, ddof=1)
                                                    if runs.shape[0] > 1
                                                    else np.full(runs.shape[1], np.nan)))
        for name, values in (chip or {}).items():
            g.create_dataset(f"chip_{name}", data=np.asarray(values, dtype=np.float64))
        if ideal_accuracy is not None:
            g.attrs[S.ATTR_IDEAL] = float(ideal_accuracy)
        for key, value in (attrs or {}).items():
            g.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
