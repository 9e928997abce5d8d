"""FoPru: keep the patches (or whole patch rows) that the vision encoder's own attention marks significant.

Paper: "FoPru: Focal Pruning for Efficient Large Vision-Language Models", arXiv 2411.14164.
No official code is public; the rules below follow the paper's abstract (token significance from the
vision encoder's attention, a *rank* and a *row* strategy, kept tokens reordered to their original
positions) and the FoPru-like ``focal`` policy of the ``dongxianzhe/hydrainfer`` engine (third party,
probably author-affiliated) for the details the abstract leaves open.

Algorithm (per view: an image, an AnyRes view, a video frame or a Qwen2-VL frame group):

1. ``A`` = the patch-to-patch block of the attention of the vision layer that feeds the projector
   (``vision_feature_layer``), averaged over heads: pre-softmax logits ``q·kᵀ/√d`` by default
   (``attention="logits"``, as hydrainfer), post-softmax probabilities with ``attention="probs"``.
   The [CLS] row and column are left out.
2. Significance = the column mean of ``A`` (attention each patch receives) or its row mean (attention
   each patch gives), whichever has the larger variance over the view's patches (the column mean on a tie).
3. ``strategy="rank"``: keep the ``keep`` most significant patches. ``strategy="row"``: sum the
   significance over each row of the view's patch grid and keep the best whole rows,
   ``round(budget / width)`` of them (at least one), where ``budget`` is what ``keep`` gives.
4. Kept patches in their original (raster) order.

Deviations and choices:
- The attention block is computed from the layer's q/k projections (logit means in O(N·d), since
  logits are bilinear in q and k; probabilities in blocks of query rows), never with
  ``output_attentions``; the values equal eager attention's (tested).
- Row mode works on any grid: non-square grids, and per AnyRes view on LLaVA-NeXT, where a crop view is
  the rectangle of its patches that survive unpadding (the notes recommend rows per crop). There the
  significance of each patch is computed over the whole crop, then restricted to the survivors.
- On Qwen2-VL (no [CLS]) the block is that of the vision block used for the [CLS] substitute
  (``model.vtr.adapter.signal_block``, default the last one, which feeds the PatchMerger projector),
  per image/frame group, and each merged token's significance is the mean over its 2×2 merge window;
  the call's stats carry an "adapted" note.
- Kept tokens keep their original position ids by default (``positions="renumber"`` renumbers, as the
  LLaVA code the method was built on); batches of any size (hydrainfer loops per image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.ops.grid import keep_rows, rows_for_budget
from vtr.reducers.base import Reducer
from vtr.config import ReducerConfig, check_choice
from vtr.registry import register_reducer
from vtr.ops.selection import keep_topk_in_order
from vtr.signals import Signal
from vtr.visual import VisualTokens

STRATEGIES = ("rank", "row")
ATTENTIONS = ("logits", "probs")


@dataclass
class FoPruConfig(ReducerConfig):
    """``strategy``: ``"rank"`` (top patches) or ``"row"`` (whole grid rows). ``attention``: score from
    the pre-softmax ``"logits"`` (default) or the post-softmax ``"probs"``."""

    strategy: str = "rank"
    attention: str = "logits"

    def validate(self) -> None:
        super().validate()
        check_choice(self.strategy, "strategy", STRATEGIES)
        check_choice(self.attention, "attention", ATTENTIONS)


def significance(means: torch.Tensor) -> torch.Tensor:
    """``(2, P)`` column and row means → the ``(P,)`` one with the larger variance (column mean on a tie)."""
    variance = means.float().var(dim=-1)
    return means[1] if variance[1] > variance[0] else means[0]


@register_reducer("fopru")
class FoPru(Reducer):
    """Focal pruning: patch-to-patch attention significance of the feature layer, by rank or whole rows."""

    config_class = FoPruConfig

    def signals_read(self) -> frozenset[Signal]:
        logits = self.config.attention == "logits"
        return frozenset({Signal.PATCH_ATTENTION_LOGIT_MEANS if logits else Signal.PATCH_ATTENTION_PROB_MEANS})

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        (signal,) = self.signals_read()
        plans = []
        for means, view in zip(visual.signal(signal), visual.views):
            scores = significance(means)
            if self.config.strategy == "rank":
                plans.append(keep_topk_in_order(scores, self.budget(view)))
            else:
                plans.append(keep_rows(scores, view.grid, rows_for_budget(view.grid, self.budget(view))))
        return plans
