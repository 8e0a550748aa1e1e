"""LSTM and GRU whose weight matrices are on the crossbar.

The input-to-hidden and hidden-to-hidden matrices of every layer and direction are analog
layers (``ih_l0``, ``hh_l0``, ``ih_l0_reverse``, ...); the gate arithmetic stays digital.
The input projection of a whole sequence is one batched pass through the crossbar; the
recurrent one is a pass per time step. Gate equations and the (output, state) interface
are torch's (``torch.nn.LSTM``, ``torch.nn.GRU``), so a model's own forward is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcmlab.analog.layers import AnalogLinear, AnalogState
from pcmlab.errors import ConfigError


class AnalogRecurrent(nn.Module):
    """Base of AnalogLSTM and AnalogGRU."""

    gates = 4

    def __init__(self, m: nn.LSTM | nn.GRU, state: AnalogState) -> None:
        super().__init__()
        self.input_size, self.hidden_size = m.input_size, m.hidden_size
        self.num_layers, self.batch_first = m.num_layers, m.batch_first
        self.bidirectional, self.dropout = m.bidirectional, float(m.dropout)
        self.directions = 2 if m.bidirectional else 1
        self.matrices = nn.ModuleDict()
        for layer in range(m.num_layers):
            for suffix in self._suffixes():
                for part in ("ih", "hh"):
                    w = getattr(m, f"weight_{part}_l{layer}{suffix}")
                    b = getattr(m, f"bias_{part}_l{layer}{suffix}") if m.bias else None
                    self.matrices[f"{part}_l{layer}{suffix}"] = AnalogLinear(w, b, state)

    @torch.no_grad()
    def export_to(self, m: nn.Module) -> None:
        """Write the (clipped) matrices and biases back into a float nn.LSTM / nn.GRU."""
        for key, lin in self.matrices.items():
            part, rest = key.split("_", 1)
            lin.export_to(m, f"weight_{part}_{rest}", f"bias_{part}_{rest}")

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def cell(self, gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
             hh: AnalogLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _zeros(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.num_layers * self.directions, batch, self.hidden_size)

    def _run(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: (T, B, features); h0, c0: (layers * directions, B, H)."""
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes()):
                k = layer * self.directions + d
                gx = self.matrices[f"ih_l{layer}{suffix}"](x)  # the whole sequence at once
                hh = self.matrices[f"hh_l{layer}{suffix}"]
                h, c = h0[k], None if c0 is None else c0[k]
                steps = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
                ys: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
                for t in steps:
                    h, c = self.cell(gx[t], h, c, hh)
                    ys[t] = h
                outs.append(torch.stack(ys))
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            x = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(h_n), torch.stack(c_n) if c_n else None

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise ConfigError(f"{type(self).__name__}: packed sequences are not supported; "
                              "pad the batch instead")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, unbatched

    def _finish(self, y: torch.Tensor, unbatched: bool) -> torch.Tensor:
        if unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}")


class AnalogLSTM(AnalogRecurrent):
    """``nn.LSTM`` with its matrices on the crossbar (no ``proj_size``)."""

    kind = "LSTM"

    def cell(self, gx, h, c, hh):
        i, f, g, o = (gx + hh(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        x, unbatched = self._prepare(x)
        if hx is None:
            h0 = c0 = self._zeros(x.shape[1], x)
        else:
            h0, c0 = (t.unsqueeze(1) if unbatched else t for t in hx)
        y, h_n, c_n = self._run(x, h0, c0)
        if unbatched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._finish(y, unbatched), (h_n, c_n)


class AnalogGRU(AnalogRecurrent):
    """``nn.GRU`` with its matrices on the crossbar."""

    kind = "GRU"
    gates = 3

    def cell(self, gx, h, c, hh):
        xr, xz, xn = gx.chunk(3, dim=-1)
        hr, hz, hn = hh(h).chunk(3, dim=-1)  # b_hn is inside hn, as torch's GRU has it
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None):
        x, unbatched = self._prepare(x)
        h0 = self._zeros(x.shape[1], x) if hx is None else (hx.unsqueeze(1) if unbatched
                                                             else hx)
        y, h_n, _ = self._run(x, h0, None)
        return self._finish(y, unbatched), (h_n.squeeze(1) if unbatched else h_n)
