"""FasterVLM: keep the patches the [CLS] token attends to most.

Paper: "[CLS] Attention is All You Need for Training-Free Visual Token Pruning: Make VLM Inference
Faster", Zhang et al., arXiv 2412.01818 (code: Theia-4869/FasterVLM).

Algorithm (per view): take the post-softmax attention of the [CLS] query to the patch keys in the
vision layer whose output feeds the projector (``vision_feature_layer``, -2 for LLaVA-1.5), average
it over heads, keep the top-k patches, and keep them in their original raster order. Pruning is
applied to the projected features before they enter the LLM.

Deviations from the reference code:
- The [CLS] row is recomputed from that layer's q/k projections instead of running the whole tower
  with eager attention and ``output_attentions=True``; the values are the same (tested against eager).
- Kept tokens keep their original position ids by default; ``positions="renumber"`` reproduces the
  reference's contiguous renumbering.
- Batches of any size are supported; the reference runs batch size 1.
- ``vision_feature_select_strategy="full"`` keeps the [CLS] feature itself (it is not a patch).
"""
from __future__ import annotations

import torch

from vtr.reducers.base import Reducer
from vtr.registry import register_reducer
from vtr.ops.selection import keep_topk_in_order
from vtr.signals import Signal
from vtr.visual import VisualTokens


@register_reducer("fastervlm")
class FasterVLM(Reducer):
    """[CLS]→patch attention at the feature layer (post-softmax, head mean), top-k in original order."""

    reads = (Signal.CLS_ATTENTION,)

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        scores = visual.signal(Signal.CLS_ATTENTION)
        return [keep_topk_in_order(s, self.budget(v)) for s, v in zip(scores, visual.views)]
