"""Attention signals computed from a layer's own q/k projections.

Fast attention kernels (SDPA, flash) never materialise attention weights, and asking a model for
``output_attentions`` forces the slow eager path on every layer. A reducer needs only a few rows of
one layer's attention, so we capture that layer's ``q_proj``/``k_proj`` outputs (which the model
computes anyway) with forward hooks and recompute just those rows: O(rows · N · D) extra work.
"""
from __future__ import annotations

import torch
from torch import nn


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N, H*d)`` → ``(B, H, N, d)``."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def attention_logits(q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Pre-softmax attention logits of the given query rows, in float32.

    Args:
        q: ``(B, Nq, H*d)`` query projections (only the rows wanted).
        k: ``(B, N, H*d)`` key projections.
    Returns:
        ``(B, H, Nq, N)`` float32 logits ``q·kᵀ·scale``.
    """
    qh = split_heads(q.float(), num_heads)
    kh = split_heads(k.float(), num_heads)
    return qh @ kh.transpose(-1, -2) * scale


def cls_attention(q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """[CLS]→patch attention: post-softmax row of token 0, mean over heads, [CLS] column dropped.

    This is what ``attentions[layer][:, :, 0, 1:].mean(1)`` gives under eager attention
    (FasterVLM's signal), without eager attention.

    Args:
        q: ``(B, N, H*d)`` or ``(B, 1, H*d)`` queries; only row 0 ([CLS]) is used.
        k: ``(B, N, H*d)`` keys, [CLS] first.
    Returns:
        ``(B, N-1)`` float32 attention of [CLS] to each patch.
    """
    probs = attention_logits(q[:, :1], k, num_heads, scale).softmax(dim=-1)
    return probs[:, :, 0, 1:].mean(dim=1)


class QKProbe:
    """Captures the q/k projections of one attention module while it is registered.

    Holding references costs nothing: the tensors exist anyway during the forward pass. Use it as
    a context manager so the hooks are always removed (an unpatched model has no vtr hooks).

    Attributes after a forward pass: ``q``, ``k`` of shape ``(B, N, H*d)``.
    """

    def __init__(self, attention: nn.Module, num_heads: int, scale: float) -> None:
        self.attention, self.num_heads, self.scale = attention, num_heads, scale
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> "QKProbe":
        self._handles = [
            self.attention.q_proj.register_forward_hook(lambda m, i, o: setattr(self, "q", o)),
            self.attention.k_proj.register_forward_hook(lambda m, i, o: setattr(self, "k", o)),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def captured(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.q is None or self.k is None:
            raise RuntimeError("the probed attention layer did not run; is the vision feature layer right?")
        return self.q, self.k
