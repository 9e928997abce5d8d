"""Bipartite token merging (as described in the ToMe paper, Bolya et al., ICLR 2023), one view at a time.

Written from the paper's description (alternate tokens into two sets, match each token of set A to
its most similar token of set B, merge the ``r`` most similar pairs); no ToMe code is used.

Each output token is *represented* by one input token: a token of set B that absorbed others, or
an unmerged token of set A. The representative's index gives the merged token its place (and,
with ``positions="original"``, its position id).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MergeResult:
    """Outcome of merging one view.

    Attributes:
        features: ``(k, D)`` merged features, in emitted order.
        sizes: ``(k,)`` how many input tokens each output token stands for.
        index: ``(k,)`` representative input index of each output token (sorted ascending when
            the order is preserved).
        members: ``(N,)`` for every input token, the output token it ended up in.
    """

    features: torch.Tensor
    sizes: torch.Tensor
    index: torch.Tensor
    members: torch.Tensor


def merge_step(x: torch.Tensor, sizes: torch.Tensor, index: torch.Tensor, r: int, weighted: bool,
               metric: torch.Tensor | None = None):
    """One bipartite round merging ``r`` tokens of set A (even positions) into set B (odd positions).

    Args:
        x: ``(n, D)`` features (also the similarity metric, cosine, unless ``metric`` is given);
            sizes: ``(n,)``; index: ``(n,)``.
        metric: ``(n, D')`` a separate similarity metric (AIM's LLaVA-1.5 path: the tower's keys),
            merged into the same groups as ``x`` and with the same weights.
    Returns:
        ``(x', sizes', index', survivors)`` where ``survivors[j]`` is the output slot of input ``j``;
        outputs are ``[unmerged A by decreasing similarity] + [B in order]`` (sorted later if asked).
        With ``metric`` given, a fifth entry: the merged metric ``(n', D')``, in the same order.
    """
    m = x if metric is None else metric
    metric_a = torch.nn.functional.normalize(m[0::2].float(), dim=-1)
    metric_b = torch.nn.functional.normalize(m[1::2].float(), dim=-1)
    best_similarity, best_b = (metric_a @ metric_b.T).max(dim=-1)  # (n_a,)
    order = torch.sort(best_similarity, descending=True, stable=True).indices
    merged_a, kept_a = order[:r], order[r:]

    size_a, size_b = sizes[0::2], sizes[1::2]
    new_size_b = size_b.index_add(0, best_b[merged_a], size_a[merged_a])
    x_out = fold(x, size_a, size_b, merged_a, kept_a, best_b, weighted)
    sizes_out = torch.cat([size_a[kept_a], new_size_b])
    index_out = torch.cat([index[0::2][kept_a], index[1::2]])
    slot = torch.empty(len(x), dtype=torch.long)
    slot_a = torch.empty(len(size_a), dtype=torch.long)
    slot_a[kept_a] = torch.arange(len(kept_a))
    slot_a[merged_a] = len(kept_a) + best_b[merged_a]
    slot[0::2] = slot_a
    slot[1::2] = len(kept_a) + torch.arange(len(size_b))
    if metric is None:
        return x_out, sizes_out, index_out, slot
    return x_out, sizes_out, index_out, slot, fold(metric, size_a, size_b, merged_a, kept_a, best_b, weighted)


def fold(x: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor, merged_a: torch.Tensor, kept_a: torch.Tensor,
         best_b: torch.Tensor, weighted: bool) -> torch.Tensor:
    """``(n, D)`` → ``[unmerged A] + [B, each the mean of itself and the A tokens folded into it]``."""
    a, b = x[0::2], x[1::2]
    r = len(merged_a)
    weight_a = size_a[merged_a].to(x.dtype) if weighted else torch.ones(r, dtype=x.dtype)
    weight_b = size_b.to(x.dtype) if weighted else torch.ones(len(b), dtype=x.dtype)
    # Weighted mean of each B token with the A tokens folded into it; unweighted = plain mean
    # of the members present in this round (the reference's scatter "mean" with include_self).
    total = b * weight_b[:, None]
    total = total.index_add(0, best_b[merged_a], a[merged_a] * weight_a[:, None])
    weight = weight_b.index_add(0, best_b[merged_a], weight_a)
    return torch.cat([a[kept_a], total / weight[:, None]])


def merge_to(x: torch.Tensor, target: int, weighted: bool = True, preserve_order: bool = True,
             metric: torch.Tensor | None = None) -> MergeResult:
    """Merge ``x`` ``(N, D)`` down to ``target`` tokens by repeated bipartite rounds.

    Each round merges ``r = min(n // 2, n - target)`` tokens, as AIM's iterative schedule does.
    ``weighted``: size-weighted averages carried across rounds (the mass ``Σ size·x`` is conserved);
    ``False`` reproduces the reference's unweighted per-round means. ``preserve_order``: outputs
    sorted by representative index (spatial order); ``False`` keeps the reference's emitted order.
    ``metric``: ``(N, D')`` the similarity metric, if not ``x`` itself; merged alongside ``x`` each
    round (as AIM's LLaVA-1.5 code merges the keys with themselves), so later rounds match merged metrics.
    """
    n = x.shape[0]
    sizes = torch.ones(n, dtype=torch.long)
    index = torch.arange(n)
    members = torch.arange(n)
    while x.shape[0] > target:
        r = min(x.shape[0] // 2, x.shape[0] - target)
        if metric is None:
            x, sizes, index, slot = merge_step(x, sizes, index, r, weighted)
        else:
            x, sizes, index, slot, metric = merge_step(x, sizes, index, r, weighted, metric)
        members = slot[members]
        if preserve_order:
            order = index.argsort()
            x, sizes, index = x[order], sizes[order], index[order]
            metric = None if metric is None else metric[order]
            members = order.argsort()[members]
    return MergeResult(x, sizes, index, members)
