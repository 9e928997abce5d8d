"""VisionZip: dominant tokens by [CLS] attention, plus contextual tokens merged from the rest.

Paper: "VisionZip: Longer is Better but Not Necessary in Vision Language Models", Yang et al.,
CVPR 2025, arXiv 2412.04467 (code: dvlab-research/VisionZip, Apache-2.0).

Algorithm (per view):

1. **Dominant tokens**: the ``k_d`` patches the [CLS] token attends to most at the feature layer
   (``Signal.CLS_ATTENTION``), kept as they are.
2. **Contextual tokens**: of the remaining patches (in raster order), ``k_c`` evenly spaced ones
   (every ``⌊R / k_c⌋``-th, from the first) are targets; every other remaining patch joins the target
   it is most similar to (dot product of L2-normalised metric vectors), and each target becomes the
   mean of itself and its members.

``k = k_d + k_c`` is the view's budget (``keep``); ``k_c = round(k · contextual)`` where
``contextual`` is the dominant/contextual split (default 10/64: the paper's 54 + 10 tokens for 64 on
LLaVA-1.5, and 108 + 20, 162 + 30 for 128 and 192). Kept tokens stay in raster order: a contextual
token takes its target patch's slot (and position id).

Deviations from the reference code:
- The [CLS] attention is the head mean (the reference sums heads: the same ranking) recomputed from
  the feature layer's q/k, not eager attention; on Qwen2-VL it is the adapted received-attention
  substitute (no [CLS]; see the adapter).
- The similarity metric and the merged vectors are the **projected** features the LLM sees; the
  reference uses the feature layer's keys as the metric and merges the tower's hidden states before
  the projector (the projector is nonlinear, so the merged tokens differ).
- The reference also keeps the [CLS] hidden state among the dominant tokens; LLaVA's default feature
  strategy drops [CLS] before the projector, so here every dominant slot is a patch.
- Budgets are per view ratios (``keep``) instead of absolute ``dominant``/``contextual`` counts,
  so AnyRes views and video frames work (the reference's counts break on LLaVA-NeXT, VisionZip#30).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig, check_float
from vtr.ops.diversity import cosine_matrix
from vtr.ops.selection import keep_topk_in_order
from vtr.reducers.base import MergedView, Reducer
from vtr.registry import register_reducer
from vtr.signals import Signal
from vtr.visual import VisualTokens


@dataclass
class VisionZipConfig(ReducerConfig):
    """``contextual``: the share of each view's budget given to merged contextual tokens, in [0, 1)
    (0 keeps dominant tokens only, i.e. FasterVLM); default 10/64, the paper's split."""

    contextual: float = 10 / 64

    def validate(self) -> None:
        super().validate()
        self.normalise("contextual", check_float(self.contextual, "contextual", 0.0, 1.0, high_open=True))


def split_budget(k: int, contextual: float) -> tuple[int, int]:
    """``(dominant, contextual)`` counts of a budget ``k``: contextual rounded half up, at least 1 dominant."""
    n_contextual = min(k - 1, math.floor(k * contextual + 0.5)) if k > 1 else 0
    return k - n_contextual, n_contextual


def contextual_merge(features: torch.Tensor, rest: torch.Tensor, n_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the patches ``rest`` ``(R,)`` (raster order) of ``features`` ``(N, D)`` into ``n_targets`` tokens.

    Returns ``(targets (n_targets,), merged (n_targets, D))``: the evenly spaced target patches and
    the mean of each target with the patches assigned to it.
    """
    step = max(1, len(rest) // n_targets)
    slots = torch.arange(0, len(rest), step)[:n_targets]
    targets = rest[slots]
    is_target = torch.zeros(len(rest), dtype=torch.bool)
    is_target[slots] = True
    others = rest[~is_target]
    merged = features[targets].float().clone()
    counts = torch.ones(n_targets)
    if len(others):
        nearest = cosine_matrix(features[others], features[targets]).argmax(dim=1)  # ties: lowest target
        merged.index_add_(0, nearest, features[others].float())
        counts.index_add_(0, nearest, torch.ones(len(others)))
    return targets, (merged / counts[:, None]).to(features.dtype)


@register_reducer("visionzip")
class VisionZip(Reducer):
    """Dominant patches by [CLS] attention plus contextual tokens merged from the rest by similarity."""

    config_class = VisionZipConfig
    reads = (Signal.CLS_ATTENTION,)

    def plan(self, visual: VisualTokens) -> list:
        plans = []
        for scores, view, features in zip(visual.signal(Signal.CLS_ATTENTION), visual.views, visual.features):
            k = self.budget(view)
            patches = features[view.n_prefix:]
            if k >= view.n_patches:
                plans.append(torch.arange(view.n_patches))
                continue
            n_dominant, n_contextual = split_budget(k, self.config.contextual)
            dominant = keep_topk_in_order(scores, n_dominant)
            if n_contextual == 0:
                plans.append(dominant)
                continue
            rest_mask = torch.ones(view.n_patches, dtype=torch.bool)
            rest_mask[dominant] = False
            targets, merged = contextual_merge(patches, rest_mask.nonzero().squeeze(1), n_contextual)
            index = torch.cat([dominant, targets])
            order = index.argsort()
            plans.append(MergedView(index[order], torch.cat([patches[dominant], merged])[order]))
        return plans
