"""From frame scores to per-frame token counts, and from a count to a frame's reduced tokens.

QuoTA's assignment, step by step (``QuoTA`` reducer, :mod:`vtr.reducers.quota.reducer`):

1. weights ``w_i = (scale · p_i) ** exponent``, normalised to sum 1 (:func:`frame_weights`);
2. counts ``n_i`` with ``Σ n_i = budget`` exactly, ``min_i ≤ n_i ≤ cap_i`` and ``n_i`` as close to
   ``budget · w_i`` as those bounds allow (:func:`allocate`): water-filling ``x_i = clamp(λ w_i, min_i,
   cap_i)`` with ``Σ x_i = budget``, then integer rounding by largest remainder;
3. each frame reduced to ``n_i`` tokens, by bilinear resampling of its token grid
   (:func:`resample_grid`) or by a top-k of a per-patch score (the reducer does that one).

Compared with the reference code (``token_compress`` in MAC-AutoML/QuoTA, ``v1``): it floors
``budget · w_i`` (so the total falls short of the budget) and has no cap, so a dominant frame is
*up-sampled* beyond its own grid; frames whose floor is 0 are dropped. Here the total is the budget
exactly, no frame exceeds its own token count (the surplus goes to the other frames in proportion
to their weights), and every frame keeps at least ``min_i`` tokens (vtr's engine keeps every view
non-empty, so the minimum is at least 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def frame_weights(scores: torch.Tensor, scale: float = 100.0, exponent: float = 2.0) -> torch.Tensor:
    """``(T,)`` non-negative scores → ``(T,)`` float64 weights ``(scale·p)^exponent / Σ``; uniform when all are 0."""
    raw = (scale * scores.double().clamp(min=0)) ** exponent
    total = raw.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(raw, 1.0 / len(raw))
    return raw / total


def waterfill(budget: float, weights: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Real shares ``x = clamp(λ·w, low, high)`` with ``Σ x = budget`` (``Σ low ≤ budget ≤ Σ high``).
    Returns ``(T,)`` float64.

    ``Σ clamp(λ·w, low, high)`` is piecewise linear and non-decreasing in ``λ``, with breakpoints where
    a frame reaches its bound (``low/w`` and ``high/w``); ``λ`` is found on the segment that contains
    the budget. Zero-weight frames stay at ``low`` until every weighted frame is at ``high``; then
    the rest is shared evenly among them.
    """
    w, low, high = weights.double(), low.double(), high.double()
    positive = w > 0
    most = torch.where(positive, high, low).sum()
    if not bool(positive.any()) or budget >= most:
        if not bool(positive.any()):
            return waterfill(budget, torch.ones_like(w), low, high)
        rest = ~positive
        x = torch.where(positive, high, low)
        if bool(rest.any()) and budget > most:
            x[rest] = waterfill(budget - float(high[positive].sum()), torch.ones(int(rest.sum()), dtype=w.dtype),
                                low[rest], high[rest])
        return x
    lam = torch.cat([torch.zeros(1, dtype=w.dtype), low[positive] / w[positive], high[positive] / w[positive]]).unique()
    totals = (lam[:, None] * w[None]).clamp(min=low, max=high).sum(dim=1)  # (K,), non-decreasing
    k = int(torch.searchsorted(totals, torch.tensor([float(budget)], dtype=w.dtype), right=False)[0])
    if k == 0:
        return low.clone()
    a, b, fa, fb = lam[k - 1], lam[k], totals[k - 1], totals[k]
    at = b if fb == fa else a + (budget - fa) / (fb - fa) * (b - a)
    return (at * w).clamp(min=low, max=high)


def allocate(budget: int, weights: torch.Tensor, caps: list[int], minimum: int = 1) -> list[int]:
    """Integer token counts per frame: ``Σ = min(budget, Σ caps)`` exactly, each within ``[min_i, cap_i]``.

    Args:
        budget: tokens for the whole video.
        weights: ``(T,)`` non-negative frame weights.
        caps: per frame, its own token count (a frame never grows).
        minimum: tokens every frame keeps at least (capped at the frame's size). When the budget
            cannot give every frame that many, the minimum becomes ``budget // T``.
    """
    budget = min(int(budget), sum(caps))
    mins = [min(minimum, c) for c in caps]
    if sum(mins) > budget:
        mins = [min(budget // len(caps), c) for c in caps]
    low = torch.tensor(mins, dtype=torch.float64)
    high = torch.tensor(caps, dtype=torch.float64)
    shares = waterfill(float(budget), weights, low, high)
    counts = shares.floor().clamp(min=low, max=high).long()
    # Largest remainder: the frames with the biggest fractional parts (and room left) get one more.
    order = sorted(range(len(caps)), key=lambda i: (-(float(shares[i]) - int(counts[i])), i))
    missing = budget - int(counts.sum())
    while missing > 0:
        progressed = False
        for i in order:
            if missing and counts[i] < caps[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return counts.tolist()


def row_lengths(n: int, grid: tuple[int, int]) -> list[int]:
    """How ``n ≤ H·W`` tokens are laid out on an ``(H, W)`` grid: rows of near-equal length.

    Square grids (the reference's case) take the reference's number of rows: with ``k = ⌊√n⌋`` it resizes
    to ``(k + 1) × k`` (rows × columns) when ``(k + 1)·k ≤ n``, else ``k × k`` (``token_compress``, version
    ``"v1"``), so its shapes are never wider than tall. Other grids take ``⌊√(n·H/W)⌋`` rows (the same
    rule scaled to the aspect ratio). Rows are at least ``⌈n/W⌉`` and at most ``min(H, n)``; each holds
    ``⌊n/rows⌋`` tokens and ``n mod rows`` rows, spread evenly, one more, so where the reference's
    rectangle holds fewer than ``n`` tokens vtr keeps the rest as longer rows. ``n = h·w`` for the
    reference's ``(h, w)`` gives exactly that ``h × w`` grid.
    """
    height, width = grid
    if height == width:
        k = math.isqrt(n)
        rows = k + 1 if (k + 1) * k <= n else k
    else:
        rows = math.floor(math.sqrt(n * height / width))
    rows = max(1, rows, math.ceil(n / width))
    rows = min(rows, height, n)
    base, extra = divmod(n, rows)
    return [base + (math.floor((i + 1) * extra / rows) - math.floor(i * extra / rows)) for i in range(rows)]


def resample_grid(features: torch.Tensor, grid: tuple[int, int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resampling of a frame's token grid down to ``n`` tokens.

    The tokens are sampled at the centres of a lattice of :func:`row_lengths` rows, exactly where
    ``F.interpolate(mode="bilinear", align_corners=False)`` samples when ``n = h·w`` (tested), so
    for such ``n`` this *is* the reference's resize to ``(h, w)``; other ``n`` get one longer row or
    more instead of losing tokens to the rectangle. Each new token takes the slot of the original
    patch under its sampling point, so positions (and overlays) stay meaningful.

    Args:
        features: ``(H·W, D)`` patch features in raster order.
        grid: ``(H, W)``.
        n: tokens to keep, ``1 ≤ n ≤ H·W``.
    Returns:
        ``(n,)`` sorted, distinct patch indices (the slots) and ``(n, D)`` resampled features.
    """
    height, width = grid
    if n >= height * width:
        return torch.arange(height * width, device=features.device), features
    rows = row_lengths(n, grid)
    points, slots = [], []
    for i, length in enumerate(rows):
        y = (2 * i + 1) / len(rows) - 1  # the sample's centre in grid_sample's [-1, 1] coordinates
        row_slot = math.floor((i + 0.5) * height / len(rows))
        for j in range(length):
            points.append(((2 * j + 1) / length - 1, y))
            slots.append(row_slot * width + math.floor((j + 0.5) * width / length))
    image = features.float().T.reshape(1, -1, height, width)  # (1, D, H, W)
    where = torch.tensor(points, dtype=torch.float32, device=features.device).view(1, 1, n, 2)
    sampled = F.grid_sample(image, where, mode="bilinear", padding_mode="border", align_corners=False)  # (1, D, 1, n)
    return torch.tensor(slots, device=features.device), sampled[0, :, 0].T.to(features.dtype)
