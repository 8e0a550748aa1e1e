"""Multi-head attention whose projections are on the crossbar.

The in-projection (``in_proj_weight``, a raw parameter of ``nn.MultiheadAttention``, or its
separate q/k/v weights when key and value have other sizes) and the out-projection are
analog layers; the attention arithmetic (scores, mask, softmax, weighted sum) stays
digital, as torch computes it. The call interface is ``nn.MultiheadAttention``'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pcmlab.analog.layers import AnalogLinear, AnalogState


def unsupported_attention(m: nn.MultiheadAttention) -> str | None:
    """Why this attention cannot go on the chip, or None."""
    if m.bias_k is not None or m.bias_v is not None:
        return "add_bias_kv is not supported"
    if m.add_zero_attn:
        return "add_zero_attn is not supported"
    return None


class AnalogMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its projections on the crossbar."""

    kind = "MultiheadAttention"
    # Read by nn.TransformerEncoderLayer's fused inference path, which would compute with
    # the raw weights and skip the analog layers: False keeps it on the module path.
    _qkv_same_embed_dim = False

    def __init__(self, m: nn.MultiheadAttention, state: AnalogState) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = m.embed_dim, m.num_heads
        self.head_dim, self.dropout, self.batch_first = m.head_dim, m.dropout, m.batch_first
        e = m.embed_dim
        b = m.in_proj_bias
        self.packed = bool(m._qkv_same_embed_dim)
        if self.packed:
            self.in_proj = AnalogLinear(m.in_proj_weight, b, state)
        else:
            parts = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
            for name, w, k in zip(("q_proj", "k_proj", "v_proj"), parts, range(3),
                                  strict=True):
                setattr(self, name, AnalogLinear(w, None if b is None else b[k * e:(k + 1) * e],
                                                 state))
        self.out_proj = AnalogLinear(m.out_proj.weight, m.out_proj.bias, state)

    @torch.no_grad()
    def export_to(self, m: nn.MultiheadAttention) -> None:
        """Write the (clipped) projections back into a float nn.MultiheadAttention."""
        e = self.embed_dim
        if self.packed:
            self.in_proj.export_to(m, "in_proj_weight", "in_proj_bias")
        else:
            for k, name in enumerate(("q_proj", "k_proj", "v_proj")):
                lin = getattr(self, name)
                getattr(m, f"{name}_weight").copy_(lin.clipped_weight())
                if lin.bias is not None:
                    m.in_proj_bias[k * e:(k + 1) * e].copy_(lin.bias.detach())
        self.out_proj.export_to(m.out_proj)

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias if self.packed else None

    def _project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        e = self.embed_dim
        if not self.packed:
            return self.q_proj(q), self.k_proj(k), self.v_proj(v)
        if q is k and k is v:  # self-attention: one pass through the 3E x E matrix
            return self.in_proj(q).split(e, dim=-1)
        # the converters act per output, so a slice of the full pass is that output's
        return (self.in_proj(q)[..., :e], self.in_proj(k)[..., e:2 * e],
                self.in_proj(v)[..., 2 * e:])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value)  # (L, B, E), (S, B, E)
        tgt, bsz, _ = q.shape
        src = k.shape[0]

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.reshape(n, bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(q, tgt), heads(k, src), heads(v, src)  # (B, H, len, d)
        mask = _merged_mask(attn_mask, key_padding_mask, q, bsz, self.num_heads, tgt, src,
                            is_causal)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            weights = None
        out = out.permute(2, 0, 1, 3).reshape(tgt, bsz, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


def _merged_mask(attn_mask, key_padding_mask, q, bsz, heads, tgt, src, is_causal):
    """One additive float mask (B, H, L, S) from torch's mask arguments, or None."""
    mask = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros_like(m, dtype=q.dtype).masked_fill(m, float("-inf"))
        m = m.to(q.dtype)
        mask = m.reshape(bsz, heads, tgt, src) if m.dim() == 3 else m.view(1, 1, tgt, src)
    if key_padding_mask is not None:
        k = key_padding_mask
        if k.dtype == torch.bool:
            k = torch.zeros_like(k, dtype=q.dtype).masked_fill(k, float("-inf"))
        k = k.to(q.dtype).view(bsz, 1, 1, src)
        mask = k if mask is None else mask + k
    return mask
