"""ATP-TF: a training-free adaptation of ATP-LLaVA's adaptive token pruning inside the LLM.

Paper: "ATP-LLaVA: Adaptive Token Pruning for Large Vision Language Models", Ye et al., CVPR 2025,
arXiv 2412.00447. The paper's pruning thresholds come from small learned heads trained with its
ATP loss; neither code nor weights are public. **This is not the paper's method**: it keeps the
paper's structure (several pruning layers, a redundancy score fusing self-modal and cross-modal
attention, an instance-adaptive threshold, united with spatially uniform sampling) and replaces
the learned thresholds by a top-p rule whose mass is calibrated to a budget with
:func:`vtr.calibrate`.

At each ATP layer ``K`` (prefill, attention of layer ``K-1`` recomputed from q/k):

- ``S_self(i)``: mean attention visual token ``i`` receives from the current visual tokens
  (each key averaged over the queries that may see it, removing the causal position bias);
- ``S_cross(i)``: mean attention it receives from the text tokens after the visual tokens
  (the instruction);
- both min-max normalised within the row; ``S_red = (S_self + S_cross) / 2``;
- redundancy set: the smallest set of visual tokens whose ``S_red`` mass reaches ``p_K``, where
  ``p_K = mass_K ** scale`` (``scale`` is what calibration tunes; larger keeps fewer);
- spatial set: every ``stride_K²``-th current visual token in sequence order — a layout-agnostic
  stand-in for the paper's 2-D grid sampling (on a raster grid it keeps every ``s²``-th patch);
- kept = redundancy ∪ spatial, so the count varies per layer and per sample.

``keep`` is the mean fraction of the LLM's input visual tokens that a decoder layer processes,
which :func:`vtr.calibrate` aims for; without calibration ``scale = 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtr.reducers.base import Reducer
from vtr.config import ReducerConfig
from vtr.registry import register_reducer


def minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.ones_like(x)


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Indices (sorted) of the smallest set of ``scores`` ``(n,)`` whose share of the total reaches ``p``."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    total = scores.sum()
    share = scores[order].cumsum(0) / total if total > 0 else torch.linspace(1 / len(scores), 1, len(scores))
    count = int((share < p).sum()) + 1
    return order[:min(count, len(scores))].sort().values


@dataclass
class ATPConfig(ReducerConfig):
    """``layers``: ATP layers as fractions of the LLM depth (floats) or layer indices (ints).
    ``mass`` and ``stride``: per ATP layer, the top-p mass and the spatial stride.
    ``scale``: exponent on ``mass`` (calibrated). ``keep``: the budget :func:`vtr.calibrate` targets."""

    keep: float | int = 0.25
    layers: tuple = (2 / 32, 8 / 32, 16 / 32, 24 / 32)
    mass: tuple = (0.9, 0.75, 0.6, 0.45)
    stride: tuple = (2, 2, 4, 4)
    scale: float = 1.0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.keep, int):
            raise TypeError("keep for atp is a ratio in (0, 1]: the mean share of visual tokens per layer")
        if not (len(self.layers) == len(self.mass) == len(self.stride) >= 1):
            raise ValueError(f"layers, mass and stride need one entry per ATP layer, got {self.layers}, {self.mass}, {self.stride}")
        if any(not 0 < m <= 1 for m in self.mass):
            raise ValueError(f"mass entries must be in (0, 1], got {self.mass}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.stride):
            raise ValueError(f"stride entries must be ints >= 1, got {self.stride}")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise ValueError(f"scale must be > 0, got {self.scale!r}")


@register_reducer("atp")
class ATP(Reducer):
    """ATP-TF (training-free adaptation of ATP-LLaVA, no learned thresholds): adaptive redundancy ∪ spatial pruning."""

    config_class = ATPConfig

    def layer_settings(self, n_layers: int) -> dict[int, tuple[float, int]]:
        """``{K: (mass, stride)}``; ``K`` clamped to ``[1, n_layers - 1]``, first setting wins on a clash."""
        settings: dict[int, tuple[float, int]] = {}
        for where, mass, stride in zip(self.config.layers, self.config.mass, self.config.stride):
            k = math.floor(where * n_layers + 0.5) if isinstance(where, float) else int(where)
            settings.setdefault(min(max(k, 1), n_layers - 1), (mass, stride))
        return settings

    def llm_layers(self, n_layers: int) -> list[int]:
        return sorted(self.layer_settings(n_layers))

    def llm_select(self, context) -> list[torch.Tensor]:
        mass, stride = self.layer_settings(context.n_layers)[context.layer]
        p = mass ** self.config.scale
        attention = context.attention
        last_visual = torch.where(context.visual, context.cols, torch.full_like(context.cols, -1)).amax(dim=1, keepdim=True)
        instruction = context.text & (context.cols > last_visual)
        self_scores, cross_scores = attention.column_means([context.visual, instruction])  # one attention pass
        chosen = []
        for b in range(context.visual.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            if visual.numel() == 0:
                chosen.append(visual)
                continue
            redundancy = (minmax(self_scores[b, visual]) + minmax(cross_scores[b, visual])) / 2
            keep = top_p(redundancy, p)
            spatial = torch.arange(0, visual.numel(), stride * stride)
            chosen.append(visual[torch.unique(torch.cat([keep, spatial]))])
        return chosen
