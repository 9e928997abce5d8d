"""Similarity and diversity selections over one view's tokens: pure tensor maths, no model.

Shared by the diversity-based reducers (DivPrune, CDPruner, VisPruner, DART, VisionZip's merge, and
vtr's own ``divrelay``). Every function works on one view at a time, so a batch-N call does exactly the
arithmetic of N batch-1 calls (batch-N equals batch-1 bitwise), and breaks ties by the lower index.
"""
from __future__ import annotations

import torch


def cosine_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, D)`` (and ``(M, D)``) → ``(N, M)`` float32 cosine similarities (``y`` defaults to ``x``)."""
    a = torch.nn.functional.normalize(x.float(), dim=-1)
    b = a if y is None else torch.nn.functional.normalize(y.float(), dim=-1)
    return a @ b.T


def first_argmax(values: torch.Tensor) -> int:
    """Index of the largest entry of a 1-D tensor, the lowest index among ties."""
    return int(torch.sort(values, descending=True, stable=True).indices[0])


def max_min_diverse(distance: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max–min diversity subset (the Max-Min Diversity Problem's classic greedy).

    The first pick is the token whose nearest other token is farthest (its minimum distance to the rest
    is largest); each next pick is the unpicked token whose minimum distance to the picked set is largest.

    Args:
        distance: ``(N, N)`` symmetric distances (e.g. ``1 - cosine``); k: picks, ``1 <= k <= N``.
    Returns:
        ``(k,)`` int64 picks in the order chosen.
    """
    n = distance.shape[0]
    if k >= n:
        return torch.arange(n)
    off_diagonal = distance.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    picks = [first_argmax(off_diagonal.min(dim=1).values)]
    nearest = distance[picks[0]].clone()  # (N,) distance of every token to the picked set
    nearest[picks[0]] = -float("inf")
    for _ in range(k - 1):
        j = first_argmax(nearest)
        picks.append(j)
        nearest = torch.minimum(nearest, distance[j])
        nearest[picks] = -float("inf")
    return torch.tensor(picks, dtype=torch.long)


def dpp_greedy_map(kernel: torch.Tensor, k: int, eps: float = 1e-10) -> torch.Tensor:
    """Greedy MAP inference of a determinantal point process (the incremental-Cholesky greedy of
    Chen, Zhang & Zhou, NeurIPS 2018): each step adds the item with the largest marginal gain
    ``log det(L_{S+j}) - log det(L_S)``, i.e. the largest remaining Schur complement ``d_j²``.

    When every remaining gain is ≤ ``eps`` (the kernel's rank is spent: more picks than feature
    dimensions), the rest are filled by the largest diagonal entries (quality) among the unpicked.

    Args:
        kernel: ``(N, N)`` positive semi-definite kernel (float32 or float64); k: ``1 <= k <= N``.
    Returns:
        ``(k,)`` int64 picks in the order chosen.
    """
    n = kernel.shape[0]
    if k >= n:
        return torch.arange(n)
    gains = torch.diagonal(kernel).clone()  # d_j², the Schur complement of every candidate
    basis = kernel.new_zeros(k, n)  # row t: the t-th Cholesky row over all candidates
    picked = torch.zeros(n, dtype=torch.bool)
    picks: list[int] = []
    for t in range(k):
        j = first_argmax(gains.masked_fill(picked, -float("inf")))
        if float(gains[j]) <= eps:
            quality = torch.diagonal(kernel).masked_fill(picked, -float("inf"))
            rest = torch.sort(quality, descending=True, stable=True).indices[: k - t]
            picks += rest.tolist()
            break
        picks.append(j)
        picked[j] = True
        row = (kernel[j] - basis[:t, j] @ basis[:t]) / gains[j].sqrt()
        basis[t] = row
        gains = gains - row.square()
    return torch.tensor(picks, dtype=torch.long)


def bipartite_dedup(features: torch.Tensor, order: torch.Tensor, target: int, step: int = 8) -> torch.Tensor:
    """VisPruner's duplicate removal: repeatedly split the candidates alternately into sets A and B
    (by position in ``order``), score each A token by its highest cosine similarity to B, and drop
    the ``min(step, R - target)`` highest-scoring A tokens; the survivors are reordered as
    ``[A kept, by decreasing score] + [B in order]`` for the next round.

    Args:
        features: ``(N, D)`` the view's features; order: ``(R,)`` candidate indices in their
            starting order; target: how many to keep (``0 <= target``); step: tokens dropped per round.
    Returns:
        ``(min(R, target),)`` the surviving candidate indices, in their final order.
    """
    if target <= 0:
        return order[:0]
    similarity = cosine_matrix(features)  # once: every round reads a block of it
    current = order.clone()
    while len(current) > target:
        r = min(step, len(current) - target)
        a, b = current[0::2], current[1::2]
        score = similarity[a][:, b].max(dim=1).values
        ranked = torch.sort(score, descending=True, stable=True).indices
        r = min(r, len(a))
        current = torch.cat([a[ranked[r:]], b])
    return current
