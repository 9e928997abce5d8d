"""Keep-index math: budgets and top-k selections that preserve the original token order."""
from __future__ import annotations

import math

import torch


def keep_count(keep: float | int, n_tokens: int) -> int:
    """Number of tokens to keep out of ``n_tokens``.

    A float is a ratio, rounded half up (576 × 0.1 = 57.6 → 58, the count FasterVLM reports for
    "90 % reduction"); an int is a count. The result is clamped to ``[1, n_tokens]``
    (0 when the view is empty).
    """
    if n_tokens <= 0:
        return 0
    count = math.floor(keep * n_tokens + 0.5) if isinstance(keep, float) else int(keep)
    return max(1, min(n_tokens, count))


def keep_topk_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, sorted ascending (original order).

    Args:
        scores: ``(N,)`` or ``(B, N)`` scores.
        k: how many to keep, ``1 <= k <= N``.
    Returns:
        ``(k,)`` or ``(B, k)`` int64 indices in increasing order. Ties go to the lower index,
        so the choice is deterministic across batch sizes and devices.
    """
    n = scores.shape[-1]
    if k >= n:
        return torch.arange(n, device=scores.device).expand(*scores.shape[:-1], n).clone()
    # A stable descending sort breaks ties by position, unlike topk whose tie order is unspecified.
    order = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices
    return order[..., :k].sort(dim=-1).values


def random_keep(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` of ``n`` indices drawn uniformly without replacement, sorted ascending. ``(k,)`` int64."""
    return torch.randperm(n, generator=generator)[:k].sort().values
