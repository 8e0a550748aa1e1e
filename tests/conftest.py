"""Shared fixtures: the reference task trained once per test session."""

import os
from dataclasses import dataclass

import pytest
from torch import nn

from pcmlab.tasks import Dataset, load_digits, reference_cnn, train_classifier


@pytest.fixture(autouse=True, scope="session")
def _own_catalog(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every file a test writes registers in a catalog of this session, never the user's."""
    os.environ["PCMLAB_CATALOG"] = str(tmp_path_factory.mktemp("catalog") / "catalog.sqlite")


@dataclass(frozen=True)
class Trained:
    model: nn.Sequential
    data: Dataset


@pytest.fixture(scope="session")
def digits_model() -> Trained:
    """The reference CNN trained with weight noise (noise-robust), fixed seeds."""
    data = load_digits(seed=0)
    model = train_classifier(reference_cnn(seed=0), data.x_train, data.y_train, epochs=30,
                             weight_noise=0.05, seed=0)
    return Trained(model, data)
