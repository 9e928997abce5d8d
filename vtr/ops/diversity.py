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
        distance: ``(N, N)`` symmetric distances (e.g. ``1 - cosine``), or ``(V, N, N)`` for ``V`` views of
            one size at once (each view's picks are exactly its own: only elementwise minima and row-wise
            argmaxes mix them); k: picks, ``1 <= k <= N``.
    Returns:
        ``(k,)`` (or ``(V, k)``) int64 picks in the order chosen.
    """
    if distance.ndim == 2:
        return max_min_diverse(distance[None], k)[0]
    views, n, _ = distance.shape
    if k >= n:
        return torch.arange(n).expand(views, n).clone()
    rows = torch.arange(views)
    off_diagonal = distance.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    pick = off_diagonal.min(dim=2).values.argmax(dim=1)  # argmax: the lowest index among ties
    picks, picked = [pick], torch.zeros(views, n, dtype=torch.bool)
    picked[rows, pick] = True
    nearest = distance[rows, pick].masked_fill(picked, -float("inf"))  # (V, N) distance to the picked set
    for _ in range(k - 1):
        pick = nearest.argmax(dim=1)
        picks.append(pick)
        picked[rows, pick] = True
        nearest = torch.minimum(nearest, distance[rows, pick]).masked_fill(picked, -float("inf"))
    return torch.stack(picks, dim=1)


def max_min_per_view(features: list[torch.Tensor], counts: list[int]) -> list[torch.Tensor]:
    """:func:`max_min_diverse` of each ``(N_v, D)`` feature tensor (cosine distance), ``counts[v]`` picks,
    sorted; views of one size and count run as one batch (the same picks as one at a time)."""
    out: list[torch.Tensor | None] = [None] * len(features)
    groups: dict[tuple[int, int], list[int]] = {}
    for v, (f, k) in enumerate(zip(features, counts)):
        groups.setdefault((f.shape[0], k), []).append(v)
    for (_, k), members in groups.items():
        distance = torch.stack([1.0 - cosine_matrix(features[v]) for v in members])
        for v, picks in zip(members, max_min_diverse(distance, k)):
            out[v] = picks.sort().values
    return out


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
