"""VisPruner: important tokens by [CLS] attention, plus diverse tokens left after removing duplicates.

Paper: "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs",
Zhang et al., ICCV 2025, arXiv 2412.01818 v2 (FasterVLM's successor; code: Theia-4869/VisPruner,
Apache-2.0).

Algorithm (per view), with ``k`` the view's budget:

1. **Important tokens**: the ``k_imp = ⌊k · important⌋`` patches with the highest [CLS] attention
   (``Signal.CLS_ATTENTION``, the feature layer's, head mean).
2. **Diverse tokens**: the other patches, ordered by decreasing [CLS] attention, go through
   similarity-based duplicate removal (:func:`vtr.ops.diversity.bipartite_dedup`): split them
   alternately into two sets, drop the (at most) 8 tokens of the first set most similar (cosine) to
   any token of the second, and repeat until ``k - k_imp`` remain.

Both sets are kept, in raster order.

Deviations from the reference code:
- Similarity is measured on the **projected** features the LLM sees; the reference uses the tower's
  feature-layer output before the projector.
- The [CLS] attention is recomputed from the feature layer's q/k (no eager attention); on Qwen2-VL it
  is the adapted received-attention substitute, which VisPruner's authors suggest for towers without
  [CLS] (VisPruner#1), pooled over each 2×2 merge window by the adapter.
- Per view (per AnyRes view, per video frame), batches of any size.
- ``important`` defaults to 0.5 (our choice; the reference takes it as a command-line ratio).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig, check_float, check_int
from vtr.ops.diversity import bipartite_dedup
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer
from vtr.signals import Signal
from vtr.visual import VisualTokens


@dataclass
class VisPrunerConfig(ReducerConfig):
    """``important``: share of each view's budget taken by [CLS] attention (the rest are diverse tokens).
    ``step``: tokens removed per deduplication round (the reference's 8)."""

    important: float = 0.5
    step: int = 8

    def validate(self) -> None:
        super().validate()
        self.normalise("important", check_float(self.important, "important", 0.0, 1.0))
        self.normalise("step", check_int(self.step, "step", low=1))


@register_reducer("vispruner")
class VisPruner(Reducer):
    """Important patches by [CLS] attention plus diverse patches after similarity-based deduplication."""

    config_class = VisPrunerConfig
    reads = (Signal.CLS_ATTENTION,)

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        plans = []
        for scores, view, features in zip(visual.signal(Signal.CLS_ATTENTION), visual.views, visual.features):
            k = self.budget(view)
            if k >= view.n_patches:
                plans.append(torch.arange(view.n_patches))
                continue
            n_important = int(k * self.config.important)
            ranked = torch.sort(scores.float(), descending=True, stable=True).indices
            diverse = bipartite_dedup(features[view.n_prefix:], ranked[n_important:], k - n_important, self.config.step)
            plans.append(torch.cat([ranked[:n_important], diverse]).sort().values)
        return plans
