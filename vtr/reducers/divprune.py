"""DivPrune: keep the max–min diverse subset of each view's projected features.

Paper: "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", Alvar et al.,
CVPR 2025, arXiv 2503.02175. Written from the paper only (its code is CC BY-NC; none of it was read).

Algorithm (per view): pruning is cast as the Max-Min Diversity Problem — choose the ``k`` tokens whose
smallest pairwise distance is largest, with the cosine distance ``1 - cos(x_i, x_j)`` of the visual
tokens the LLM would see (the projected features) — and solved greedily
(:func:`vtr.ops.diversity.max_min_diverse`): start from the token whose nearest neighbour is farthest,
then repeatedly add the token farthest from everything chosen so far. Kept tokens keep raster order.
No attention and no text are used, so every family is served alike.

Deviations from the paper:
- The first pick is our reading of the greedy's initialisation (the token with the largest distance to
  its nearest neighbour); ties go to the lower index.
- Per view (per AnyRes view, per video frame) rather than over one image's full token list; batches
  of any size.
"""
from __future__ import annotations

import torch

from vtr.ops.diversity import max_min_per_view
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer
from vtr.visual import VisualTokens


@register_reducer("divprune")
class DivPrune(Reducer):
    """Max–min diverse subset (greedy) of the projected features, cosine distance."""

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        patches = [f[v.n_prefix:] for f, v in zip(visual.features, visual.views)]
        return max_min_per_view(patches, [self.budget(v) for v in visual.views])
