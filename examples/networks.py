"""Real networks for the chip, each small enough to train on scikit-learn's bundled digits
in seconds: a residual CNN, a Conv1d keyword-spotting-style CNN, an LSTM classifier and a
transformer encoder. Each function is a factory for ``--model examples.networks:NAME``.

Inputs: the CNN takes images (1, 8, 8); the others take the 8 rows of a digit as a
sequence of 8 steps of 8 values, (8, 8).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity (or a strided 1x1 conv), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet-style CNN: stem, residual stages, global pooling, classifier."""

    input_shape = (1, 8, 8)

    def __init__(self, channels: tuple[int, ...] = (16, 32), in_channels: int = 1,
                 classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1,
                                            bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        blocks, c = [], channels[0]
        for i, width in enumerate(channels):
            blocks += [ResidualBlock(c, width, stride=1 if i == 0 else 2),
                       ResidualBlock(width, width)]
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class KeywordCNN(nn.Module):
    """A keyword-spotting-style CNN over time (Conv1d): a standard conv, a depthwise-
    separable block (depthwise Conv1d, groups = channels, then pointwise), pooling."""

    input_shape = (8, 8)  # features x time steps

    def __init__(self, features: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, 32, 3, padding=1)
        self.bn = nn.BatchNorm1d(32)
        self.depthwise = nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.pointwise = nn.Conv1d(32, 48, 1)
        self.bn2 = nn.BatchNorm1d(48)
        self.fc = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.bn2(self.pointwise(torch.relu(self.depthwise(y)))))
        return self.fc(y.mean(dim=2))


class LSTMClassifier(nn.Module):
    """An LSTM over the rows of a digit; the last hidden state feeds a classifier."""

    input_shape = (8, 8)

    def __init__(self, features: int = 8, hidden: int = 48, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return self.fc(h[-1])


class TransformerClassifier(nn.Module):
    """A small transformer encoder: a linear embedding of each row, a learned position
    embedding (digital), one nn.TransformerEncoderLayer, mean pooling, a classifier."""

    input_shape = (8, 8)

    def __init__(self, features: int = 8, d_model: int = 32, heads: int = 4,
                 steps: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.position = nn.Parameter(torch.zeros(1, steps, d_model))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0,
                                       batch_first=True), num_layers=1,
            enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encoder(self.embed(x) + self.position)
        return self.fc(y.mean(dim=1))


def mlp(seed: int = 0) -> nn.Module:
    """A two-layer perceptron on the 64 pixels (the aihwkit bridge's examples use it)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ResNet(channels=(8, 16))


def kws_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return KeywordCNN()


def lstm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LSTMClassifier()


def transformer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TransformerClassifier()


FACTORIES = {"resnet": resnet, "kws_cnn": kws_cnn, "lstm": lstm, "transformer": transformer}
