"""Pooling baseline: uniform 2-D average pooling of each view's patch grid down to the budget.

Not a paper's method: the simple spatial baseline that token-reduction papers compare against (and
what LLaVA-OneVision/LLaVA-Video do to video frames with their 2×2 ``get_2dPool`` of the projected
features). It needs no attention signal, so it works on every family: per image, per AnyRes view, per
video frame and per Qwen2-VL frame group.

Per view with a ``(h, w)`` patch grid and a budget of ``k`` patches (``keep``):

1. Output grid ``(h', w')``: ``h' ≈ h·√(k/(h·w))`` (rounded down or up, whichever leaves more cells,
   then the closer aspect ratio) and ``w' = ⌊k/h'⌋``, so ``h'·w' <= k`` and the aspect ratio is kept up
   to rounding (:func:`vtr.ops.grid.pooled_shape`).
2. Each output cell is the mean of the *projected* features (what the LLM sees) over a uniform
   cell of the grid, the cells of adaptive average pooling (``⌊i·h/h'⌋`` to ``⌈(i+1)·h/h'⌉``; they
   overlap by one patch where ``h'`` does not divide ``h``); equal to ``avg_pool2d`` where it divides.
3. Each pooled token takes the slot of one representative patch of its cell (``anchor="center"``, the
   middle patch, or ``"top_left"``): with ``positions="original"`` it gets that patch's position id
   (1-D position, or Qwen2-VL's (t, h, w) M-RoPE position), so positions stay spatially meaningful.

Prefix tokens (a [CLS] feature kept under ``"full"``, Video-LLaVA's frame [CLS]) are kept as they are.
``keep=1.0`` (or any budget of at least ``h·w``) keeps every patch unchanged.
Averages are taken in float32 and cast back to the features' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vtr.ops.grid import cell_anchors, pooled_shape
from vtr.reducers.base import MergedView, Reducer
from vtr.config import ReducerConfig, check_choice
from vtr.registry import register_reducer
from vtr.visual import VisualTokens

ANCHORS = ("center", "top_left")


@dataclass
class PoolConfig(ReducerConfig):
    """``anchor``: the patch of each pooling cell whose slot (and position id) the pooled token takes,
    ``"center"`` (default) or ``"top_left"``."""

    anchor: str = "center"

    def validate(self) -> None:
        super().validate()
        check_choice(self.anchor, "anchor", ANCHORS)


def pool_view(patches: torch.Tensor, grid: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """``(h·w, D)`` raster-order features → ``(h'·w', D)`` cell means, raster order of the cells."""
    h, w = grid
    image = patches.float().T.reshape(1, -1, h, w)  # (1, D, h, w)
    return F.adaptive_avg_pool2d(image, out)[0].flatten(1).T.to(patches.dtype)


@register_reducer("pool")
class Pool(Reducer):
    """Uniform 2-D average pooling of each view's patch grid to the budget (baseline, every family)."""

    config_class = PoolConfig

    def plan(self, visual: VisualTokens) -> list[torch.Tensor | MergedView]:
        plans = []
        for features, view in zip(visual.features, visual.views):
            out = pooled_shape(view.grid, self.budget(view))
            if out == view.grid:
                plans.append(torch.arange(view.n_patches))
                continue
            patches = features[view.n_prefix:view.n_prefix + view.n_patches]
            index = cell_anchors(view.grid, out, self.config.anchor).to(patches.device)
            plans.append(MergedView(index, pool_view(patches, view.grid, out)))
        return plans
