"""The reference task: scikit-learn's bundled digits (8 x 8 images, no download) and a
small CNN that trains on the CPU in seconds."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcmlab.analog import crossbar_parameters
from pcmlab.errors import ConfigError

log = logging.getLogger(__name__)

DIGITS_INPUT_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DataSource:
    """Where a dataset came from, as a deployment records it (``/`` attr ``config``,
    key ``data``), so that a later evaluation can use the same data or say it does not."""

    name: str  # "digits" (scikit-learn's bundled split) or "file" (an .npz)
    sha256: str  # 16 hex digits over x_train, y_train, x_test, y_test (shapes and bytes)
    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    path: str | None = None  # the .npz as the user gave it
    resolved_path: str | None = None  # and as an absolute path
    seed: int | None = None  # the digits split's seed

    def describe(self) -> str:
        where = f"digits split seed {self.seed}" if self.name == "digits" else str(self.path)
        return (f"{where}: {self.n_test} test samples of shape {self.input_shape}, "
                f"sha256 {self.sha256}")

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "input_shape": list(self.input_shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSource:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


def content_hash(*tensors: torch.Tensor) -> str:
    """16 hex digits of SHA-256 over the tensors' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: DataSource | None = field(default=None, compare=False)
    # False: the file had no x_train, y_train and the test set stands in for it (it may
    # calibrate ranges, never train: a network trained on its test set scores on itself)
    train_split: bool = field(default=True, compare=False)

    def require_training_split(self, what: str) -> None:
        """Refuse ``what`` (a training) on data whose training split is its test set."""
        if not self.train_split:
            where = (self.source.path if self.source is not None and self.source.path
                     else "the data file")
            raise ConfigError(f"{what} needs training data: {where} has no x_train, y_train "
                              "(only x_test, y_test, which would then be trained on and "
                              "scored); add x_train and y_train to the .npz")

    def with_source(self, name: str, **where: Any) -> Dataset:
        """This dataset, with its provenance (hash and shapes computed here)."""
        source = DataSource(name, content_hash(self.x_train, self.y_train, self.x_test,
                                               self.y_test),
                            int(self.x_train.shape[0]), int(self.x_test.shape[0]),
                            tuple(self.x_test.shape[1:]), **where)
        return Dataset(self.x_train, self.y_train, self.x_test, self.y_test, source,
                       self.train_split)


def load_digits(seed: int = 0, test_fraction: float = 0.4,
                input_shape: tuple[int, ...] = DIGITS_INPUT_SHAPE) -> Dataset:
    """Digits scaled to [0, 1], shape (N, 1, 8, 8) or any ``input_shape`` of 64 values
    (e.g. (8, 8): the rows as a sequence of 8 steps); a fixed, shuffled split."""
    if int(np.prod(input_shape)) != 64:
        raise ConfigError(f"digits have 64 pixels; a model that takes {tuple(input_shape)} "
                          "needs its own data (--data FILE.npz)")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ConfigError("the reference task needs scikit-learn (pip install scikit-learn)"
                          ) from None
    data = sk_load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).reshape(-1, *input_shape)
    y = torch.tensor(data.target, dtype=torch.long)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test]).with_source("digits", seed=seed)


def reference_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


EpochCallback = Callable[[int, float, float], None]  # epoch, loss, train accuracy


def train_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 40,
    lr: float = 3e-3, batch: int = 64, weight_noise: float = 0.0, seed: int = 0,
    on_epoch: EpochCallback | None = None,
) -> nn.Module:
    """Adam with cross entropy. ``weight_noise`` > 0 adds Gaussian noise of that std,
    relative to each layer's max |W|, to the crossbar weights on every forward pass
    (gradient straight through to the clean weights) so the model tolerates PCM noise."""
    if epochs < 1:
        raise ConfigError(f"epochs = {epochs}: need at least one")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    analog = crossbar_parameters(model)
    n = x.shape[0]
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, correct = 0.0, 0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            noises = []
            if weight_noise > 0:
                with torch.no_grad():
                    for w in analog:
                        e = torch.randn(w.shape, generator=gen)
                        e *= weight_noise * w.abs().max()
                        w.add_(e)
                        noises.append(e)
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            opt.zero_grad()
            loss.backward()
            if noises:
                with torch.no_grad():
                    for w, e in zip(analog, noises, strict=True):
                        w.sub_(e)
            opt.step()
            total += float(loss.detach()) * idx.numel()
            correct += int((out.argmax(1) == y[idx]).sum())
        if on_epoch is not None:
            on_epoch(epoch + 1, total / n, correct / n)
    return model.eval()


def tensors_from_loader(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """All (inputs, labels) batches of a torch DataLoader as two tensors."""
    xs, ys = [], []
    for x, y in loader:
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(torch.as_tensor(y, dtype=torch.long))
    if not xs:
        raise ConfigError("the data loader yielded no batches")
    return torch.cat(xs), torch.cat(ys)


def load_npz_dataset(path: str | Path, input_shape: tuple[int, ...] | None) -> Dataset:
    """A dataset from an .npz with ``x_test`` and ``y_test`` (and optionally ``x_train``,
    ``y_train``: the calibration data; else the test inputs calibrate). No pickles."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file (expected .npz with x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError):
        raise ConfigError(f"{path}: not a numpy .npz archive of plain arrays") from None
    missing = [k for k in ("x_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)} (has "
                          f"{', '.join(arrays) or 'nothing'})")

    def inputs(name: str) -> torch.Tensor:
        a = arrays[name]
        if a.ndim < 1 or (input_shape is not None and tuple(a.shape[1:]) != tuple(input_shape)):
            raise ConfigError(f"{path}: {name} has shape {a.shape}; the model takes "
                              f"(N, {', '.join(map(str, input_shape))})")
        return torch.tensor(a, dtype=torch.float32)

    def labels(name: str, n: int) -> torch.Tensor:
        a = arrays[name]
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"{path}: {name} must be {n} integer class labels, got "
                              f"shape {a.shape}, dtype {a.dtype}")
        return torch.tensor(a, dtype=torch.long)

    x_test = inputs("x_test")
    y_test = labels("y_test", x_test.shape[0])
    if "x_train" in arrays and "y_train" in arrays:
        x_train = inputs("x_train")
        y_train = labels("y_train", x_train.shape[0])
        train_split = True
    else:  # the test inputs calibrate ranges; training on them is refused
        x_train, y_train, train_split = x_test, y_test, False
    return Dataset(x_train, y_train, x_test, y_test, train_split=train_split).with_source(
        "file", path=str(path), resolved_path=str(path.resolve()))
