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
    """Captures the outputs of one attention layer's query and key projections while registered
    (the adapter hands over the two projection modules: module paths are its business).

    Holding references costs nothing: the tensors exist anyway during the forward pass. Use it as
    a context manager so the hooks are always removed (an unpatched model has no vtr hooks).

    Attributes after a forward pass: ``q``, ``k`` of shape ``(B, N, H*d)``.
    """

    def __init__(self, q_proj: nn.Module, k_proj: nn.Module, num_heads: int, scale: float) -> None:
        self.projections, self.num_heads, self.scale = (q_proj, k_proj), num_heads, scale
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> "QKProbe":
        q_proj, k_proj = self.projections
        self._handles = [
            q_proj.register_forward_hook(lambda m, i, o: setattr(self, "q", o)),
            k_proj.register_forward_hook(lambda m, i, o: setattr(self, "k", o)),
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


def cls_rows(q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS]→patch attention of one layer, post-softmax and pre-softmax, both averaged over heads.

    Args:
        q: ``(B, Nq, H*d)`` queries; only row 0 ([CLS]) is used.
        k: ``(B, N, H*d)`` keys, [CLS] first.
    Returns:
        ``(probs, logits)``, each ``(B, N-1)`` float32: ``attentions[:, :, 0, 1:].mean(1)`` and the same
        slice of the logits ``q·kᵀ·scale`` (GlobalCom²'s signal) averaged over heads.
    """
    logits = attention_logits(q[:, :1], k, num_heads, scale)  # (B, H, 1, N)
    return logits.softmax(dim=-1)[:, :, 0, 1:].mean(dim=1), logits[:, :, 0, 1:].mean(dim=1)


def patch_attention_means(
    q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float, probs: bool = False, n_prefix: int = 1,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """Column and row means of the head-mean patch-to-patch attention block (FoPru's significance).

    With ``A = attentions[:, :, n_prefix:, n_prefix:].mean(1)`` (``(B, P, P)``, queries × keys), row 0
    of the result is ``A.mean(1)`` (per key patch, the attention it receives averaged over query
    patches) and row 1 is ``A.mean(2)`` (per query patch, averaged over key patches).

    Args:
        q, k: ``(B, N, H*d)`` query and key projections, the ``n_prefix`` non-patch tokens first.
        probs: use post-softmax probabilities (softmax over all ``N`` keys, as eager attention returns
            them) instead of the pre-softmax logits ``q·kᵀ·scale``.
        max_elements: largest block of logits materialised at once (64 MiB in float32); the ``N×N``
            matrix is computed in blocks of query rows, never whole.
    Returns:
        ``(B, 2, P)`` float32, ``P = N - n_prefix``.
    """
    qh, kh = split_heads(q.float(), num_heads), split_heads(k.float(), num_heads)  # (B, H, N, d)
    qp, kp = qh[:, :, n_prefix:], kh[:, :, n_prefix:]
    if not probs:
        # Logits are bilinear in q and k, so their means need no N×N matrix: the mean over query
        # patches of q_i·k_j is (mean_i q_i)·k_j, and likewise for key patches.
        received = (qp.mean(dim=2, keepdim=True) @ kp.transpose(-1, -2))[:, :, 0].mean(dim=1) * scale
        given = (qp @ kp.mean(dim=2, keepdim=True).transpose(-1, -2))[:, :, :, 0].mean(dim=1) * scale
        return torch.stack([received, given], dim=1)
    b, h, n, _ = qh.shape
    n_patches = n - n_prefix
    received = torch.zeros(b, n_patches, dtype=torch.float32, device=q.device)
    given = torch.empty(b, n_patches, dtype=torch.float32, device=q.device)
    rows = max(1, max_elements // (b * h * n))
    for start in range(0, n_patches, rows):
        block = qp[:, :, start:start + rows] @ kh.transpose(-1, -2) * scale  # (B, H, r, N)
        block = block.softmax(dim=-1)[..., n_prefix:].mean(dim=1)  # (B, r, P): softmax is per query row
        received += block.sum(dim=1)
        given[:, start:start + rows] = block.mean(dim=-1)
    return torch.stack([received / n_patches, given], dim=1)


class ClsRowsProbe:
    """Records the [CLS]→patch attention row of several attention modules while registered.

    Unlike :class:`QKProbe`, it keeps no q/k: each layer's row is computed in the hook, as soon as
    both projections of that layer have run, so probing every layer of a tower holds only
    ``2 · L`` vectors of ``N - 1`` floats per image.

    Attributes after a forward pass: ``probs`` and ``logits``, lists (one per layer, in the given
    order) of ``(B, N-1)`` float32 head-mean rows (see :func:`cls_rows`).

    Args:
        projections: per layer, its ``(q_proj, k_proj)`` modules (found by the adapter).
    """

    def __init__(self, projections: list[tuple[nn.Module, nn.Module]], num_heads: int, scale: float) -> None:
        self.projections, self.num_heads, self.scale = list(projections), num_heads, scale
        self.probs: list[torch.Tensor | None] = [None] * len(self.projections)
        self.logits: list[torch.Tensor | None] = [None] * len(self.projections)
        self._pending: list[dict] = [{} for _ in self.projections]
        self._handles: list = []

    def _record(self, index: int, name: str, output: torch.Tensor) -> None:
        pending = self._pending[index]
        pending[name] = output[:, :1] if name == "q" else output  # only the [CLS] query is needed
        if len(pending) == 2:
            with torch.no_grad():
                self.probs[index], self.logits[index] = cls_rows(pending["q"], pending["k"], self.num_heads, self.scale)
            pending.clear()

    def __enter__(self) -> "ClsRowsProbe":
        for index, pair in enumerate(self.projections):
            for name, module in zip(("q", "k"), pair):
                hook = lambda m, i, o, index=index, name=name: self._record(index, name, o)  # noqa: E731
                self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending = [{} for _ in self.projections]

    def captured(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, logits)``, each ``(B, L, N-1)`` over the probed layers."""
        if any(p is None for p in self.probs):
            raise RuntimeError("a probed vision layer did not run; cannot report its [CLS] attention")
        return torch.stack(self.probs, dim=1), torch.stack(self.logits, dim=1)
