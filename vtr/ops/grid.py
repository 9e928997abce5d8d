"""2-D patch-grid math: whole-row selection and uniform pooling cells, for views of any ``(h, w)`` grid.

Patches are numbered in raster order (index ``r · w + c``), as in every :class:`~vtr.visual.View`.
"""
from __future__ import annotations

import math

import torch


def keep_rows(scores: torch.Tensor, grid: tuple[int, int], n_rows: int) -> torch.Tensor:
    """All patches of the ``n_rows`` grid rows with the largest summed score, in raster order.

    Args:
        scores: ``(h·w,)`` per-patch scores in raster order.
        grid: ``(h, w)``.
        n_rows: rows to keep, ``1 <= n_rows <= h``.
    Returns:
        ``(n_rows · w,)`` int64 sorted patch indices. Ties go to the upper row.
    """
    h, w = grid
    sums = scores.float().view(h, w).sum(dim=1)
    rows = torch.sort(sums, descending=True, stable=True).indices[:n_rows].sort().values
    return (rows[:, None] * w + torch.arange(w, device=scores.device)).flatten()


def rows_for_budget(grid: tuple[int, int], budget: int) -> int:
    """Whole rows that best spend a budget of ``budget`` patches: ``round(budget / w)``, in ``[1, h]``."""
    h, w = grid
    return max(1, min(h, math.floor(budget / w + 0.5)))


def pooled_shape(grid: tuple[int, int], budget: int) -> tuple[int, int]:
    """Output grid ``(h', w')`` of a uniform pooling of ``grid`` to at most ``budget`` cells.

    ``h'`` is ``h · √(budget / (h·w))`` rounded down or up and ``w' = ⌊budget / h'⌋`` (all within the
    grid), so ``h'·w' <= budget``; of the two, the one with more cells wins, then the one closer to the
    grid's aspect ratio, then the smaller ``h'`` (24×24 → 12×12 for 144 and 7×8 for 58; 7×8 → 3×4
    for 14; a 4×2 grid → 2×1 for 2). ``budget >= h·w`` gives the grid itself.
    """
    h, w = grid
    if budget >= h * w:
        return h, w
    exact = h * math.sqrt(budget / (h * w))
    shapes = {(rows, max(1, min(w, budget // rows))) for rows in {math.floor(exact), math.ceil(exact)}
              if 1 <= rows <= h} or {(1, max(1, min(w, budget)))}

    def rank(shape):
        return -shape[0] * shape[1], round(abs(math.log(shape[0] * w / (shape[1] * h))), 9), shape[0]

    return min(shapes, key=rank)


def cell_bounds(size: int, cells: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each of ``cells`` uniform cells over ``size`` patches.

    The cells of adaptive average pooling: ``start = ⌊i·size/cells⌋``, ``end = ⌈(i+1)·size/cells⌉``
    (neighbours overlap by one patch where ``cells`` does not divide ``size``).
    """
    return [((i * size) // cells, -((-(i + 1) * size) // cells)) for i in range(cells)]


def cell_anchors(grid: tuple[int, int], out: tuple[int, int], anchor: str = "center") -> torch.Tensor:
    """The patch each pooled cell is placed at, ``(h'·w',)`` int64 raster indices, sorted and unique.

    ``anchor``: ``"center"`` (the cell's middle patch, rounding up and left) or ``"top_left"``. Both
    strictly increase from cell to cell, so the pooled tokens keep the raster order of their cells.
    """
    h, w = grid

    def pick(bounds):
        return [start if anchor == "top_left" else (start + end - 1) // 2 for start, end in bounds]

    rows = torch.tensor(pick(cell_bounds(h, out[0])))
    cols = torch.tensor(pick(cell_bounds(w, out[1])))
    return (rows[:, None] * w + cols[None, :]).flatten()
