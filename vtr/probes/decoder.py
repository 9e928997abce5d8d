"""Attention of one decoder layer, recomputed from its own q/k projections (prefill only).

In-LLM reducers need attention rows (FastV: the last token's row; ATP: text→visual and
visual→visual rows; AIM: the whole matrix for PageRank). Fast kernels never expose weights and
``output_attentions`` would force eager attention, so :class:`DecoderQKProbe` captures the
layer's ``q_proj``/``k_proj`` outputs and its RoPE cos/sin, and :class:`LayerAttention` recomputes
exactly what eager attention would give (RoPE applied, KV heads repeated, causal + padding mask),
one query chunk or one head at a time so the N×N matrix is never held for all heads at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DecoderAttention:
    """The parts of one decoder attention module a probe hooks; the adapter finds them, so this
    module knows no transformers module path.

    Attributes:
        module: the attention module; its forward gets ``position_embeddings=(cos, sin)`` as a keyword.
        q_proj, k_proj: the modules whose outputs are ``(B, n, H·d)`` queries and ``(B, n, H_kv·d)`` keys.
        head_dim: ``d``; ``scaling``: the logit scale (``d ** -0.5`` for the supported families).
    """

    module: nn.Module
    q_proj: nn.Module
    k_proj: nn.Module
    head_dim: int
    scaling: float


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``: ``(B, H, n, d)``; ``cos``/``sin``: ``(B|1, n, d)`` as the decoder passes them."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def causal_allowed(cols_q: torch.Tensor, cols_k: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Which keys each query may attend to, from original column indices.

    Args:
        cols_q: ``(B, q)`` original columns of the queries; ``cols_k``: ``(B, k)`` of the keys.
        key_valid: ``(B, k)`` False for padding and for filler entries of ragged rows.
    Returns:
        ``(B, q, k)`` bool: key column ≤ query column and key valid. A query with no allowed key
        (a filler or padding row) may attend to its own column, so softmax never sees an empty row.
    """
    allowed = (cols_k[:, None, :] <= cols_q[:, :, None]) & key_valid[:, None, :]
    own = cols_k[:, None, :] == cols_q[:, :, None]
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | (own & empty)


class DecoderQKProbe:
    """Captures q/k (after RoPE) of one decoder attention module during prefill."""

    def __init__(self, attention: DecoderAttention) -> None:
        self.attention = attention
        self.q_raw = self.k_raw = self.cos_sin = None
        self._handles: list = []

    def __enter__(self) -> "DecoderQKProbe":
        a = self.attention
        self._handles = [
            a.module.register_forward_pre_hook(self._record_rope, with_kwargs=True),
            a.q_proj.register_forward_hook(lambda m, i, o: setattr(self, "q_raw", o)),
            a.k_proj.register_forward_hook(lambda m, i, o: setattr(self, "k_raw", o)),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _record_rope(self, module, args, kwargs) -> None:
        self.cos_sin = kwargs.get("position_embeddings")

    def clear(self) -> None:
        self.q_raw = self.k_raw = self.cos_sin = None

    def attention_of(self, cols: torch.Tensor, key_valid: torch.Tensor) -> "LayerAttention":
        """The captured layer's attention for a sequence whose entries sit at original ``cols``."""
        a = self.attention
        head_dim = a.head_dim
        b, n, _ = self.q_raw.shape
        q = self.q_raw.float().view(b, n, -1, head_dim).transpose(1, 2)
        k = self.k_raw.float().view(b, n, -1, head_dim).transpose(1, 2)
        cos, sin = (t.float() for t in self.cos_sin)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query attention
        return LayerAttention(q, k, a.scaling, cols, key_valid)


class LayerAttention:
    """Exact attention probabilities of one layer, computed on demand.

    Attributes:
        q, k: ``(B, H, n, d)`` float32 after RoPE (KV heads repeated).
        cols: ``(B, n)`` original columns; ``key_valid``: ``(B, n)``.
    """

    def __init__(self, q, k, scaling: float, cols: torch.Tensor, key_valid: torch.Tensor) -> None:
        self.q, self.k, self.scaling, self.cols, self.key_valid = q, k, scaling, cols, key_valid

    def logits(self, rows: torch.Tensor, heads: slice = slice(None)) -> torch.Tensor:
        """Masked pre-softmax logits of query positions ``rows`` ``(B, r)`` → ``(B, h, r, n)``."""
        index = rows[:, None, :, None].expand(-1, self.q[:, heads].shape[1], -1, self.q.shape[-1])
        q = self.q[:, heads].gather(2, index)
        logits = q @ self.k[:, heads].transpose(-1, -2) * self.scaling
        allowed = causal_allowed(self.cols.gather(1, rows), self.cols, self.key_valid)
        return logits.masked_fill(~allowed[:, None], float("-inf"))

    def probs(self, rows: torch.Tensor, heads: slice = slice(None)) -> torch.Tensor:
        """Post-softmax attention of query positions ``rows`` ``(B, r)`` → ``(B, h, r, n)``."""
        return self.logits(rows, heads).softmax(dim=-1)

    def last_row(self) -> torch.Tensor:
        """Head-mean attention of each row's last valid token → ``(B, n)`` (FastV's signal)."""
        positions = torch.arange(self.cols.shape[1], device=self.cols.device).expand_as(self.cols)
        last = positions.masked_fill(~self.key_valid, -1).amax(dim=1, keepdim=True)
        return self.probs(last)[:, :, 0].mean(dim=1)

    def column_means(self, query_masks: list[torch.Tensor], chunk: int = 256) -> list[torch.Tensor]:
        """Mean attention each key receives from the queries of each mask ``(B, n)``, head-mean.

        Each key is averaged over the selected queries that may attend to it (causal), which
        removes the position bias of early keys. One pass over query chunks serves every mask.
        Returns one ``(B, n)`` tensor per mask.
        """
        b, n = self.cols.shape
        totals = [self.q.new_zeros(b, n) for _ in query_masks]
        counts = [self.q.new_zeros(b, n) for _ in query_masks]
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(n, start + chunk), device=self.cols.device).expand(b, -1)
            p = self.probs(rows).mean(dim=1)  # (B, r, n)
            allowed = causal_allowed(self.cols.gather(1, rows), self.cols, self.key_valid).float()
            for mask, total, count in zip(query_masks, totals, counts):
                weight = mask[:, start:start + chunk].float()[..., None]  # (B, r, 1)
                total += (p * weight).sum(dim=1)
                count += (allowed * weight).sum(dim=1)
        return [total / count.clamp(min=1) for total, count in zip(totals, counts)]

    def column_mean(self, query_mask: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """:meth:`column_means` for one mask → ``(B, n)``."""
        return self.column_means([query_mask], chunk)[0]

    def pagerank(self, temperature: float = 0.1, iterations: int = 5) -> torch.Tensor:
        """AIM's importance: power iteration ``v ← v·softmax(logits/τ)`` from ``v = 1/n``, RMS over heads.

        One head at a time, so memory stays at one ``(B, n, n)`` matrix. Returns ``(B, n)``.
        """
        b, n = self.cols.shape
        rows = torch.arange(n, device=self.cols.device).expand(b, -1)
        valid = self.key_valid.float()
        squares = self.q.new_zeros(b, n)
        for h in range(self.q.shape[1]):
            m = (self.logits(rows, slice(h, h + 1))[:, 0] / temperature).softmax(dim=-1)  # (B, n, n)
            v = valid / valid.sum(dim=1, keepdim=True)
            for _ in range(iterations):
                v = torch.einsum("bi,bij->bj", v * valid, m)
            squares += v.square()
        return (squares / self.q.shape[1]).sqrt()
