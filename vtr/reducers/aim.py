"""AIM: merge similar visual tokens before the LLM, then prune by PageRank inside it.

Paper: "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning", Zhong et al.,
ICCV 2025, arXiv 2412.03248 (code: LaVi-Lab/AIM).

Stage 1, before the LLM (per view: per image, per AnyRes view, per video frame): iterative
bipartite similarity merging (:mod:`vtr.ops.merge`), each round merging ``min(n // 2, n - target)``
tokens, down to ``keep`` of the view's patch tokens.

Stage 2, inside the LLM (prefill): after each layer ``l`` in ``[l1, l2)`` the importance of every
token is PageRank on that layer's attention (``v ← v·softmax(logits/τ)``, τ = 0.1, 5 iterations
from ``v = 1/n``, RMS over heads); text tokens are always kept and the visual tokens are cut to
``n_visual · r(l)`` with the linear schedule ``r(l) = 1 − (l − l1 + 1)/(l2 − l1)``, so no visual
token is left from layer ``l2`` on. Defaults: ``l1, l2`` = 14/28 and 22/28 of the depth (the
paper's 14 and 22 on 28-layer Qwen2-7B).

Deviations from the reference code, each configurable back where it matters:
- Merging is size-weighted across rounds (the mass ``Σ size·x`` is conserved) and keeps spatial
  order; the reference takes unweighted per-round means and emits tokens in a scrambled order
  (``weighted=False, preserve_order=False`` reproduce that).
- The merge metric is the projected features (the reference's video path); its LLaVA-1.5 path uses
  CLIP last-layer keys.
- Pruning physically drops tokens (hidden states, positions, KV cache), so the speed-up is real;
  the reference only masks attention (and needs eager attention). PageRank is recomputed exactly
  from the layer's q/k, one head at a time.
- Batches of any size; the reference assumes batch 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtr.ops.merge import merge_to
from vtr.reducers.base import MergedView, Reducer
from vtr.config import ReducerConfig
from vtr.registry import register_reducer
from vtr.ops.selection import keep_topk_in_order
from vtr.visual import VisualTokens


def resolve_layer(value: float | int, n_layers: int) -> int:
    """A float is a fraction of the depth (rounded half up), an int a layer index."""
    return math.floor(value * n_layers + 0.5) if isinstance(value, float) else int(value)


@dataclass
class AIMConfig(ReducerConfig):
    """``keep``: tokens each view keeps after merging (ratio or count). ``weighted`` /
    ``preserve_order``: see the module notes. ``prune``: run stage 2. ``prune_start`` /
    ``prune_end``: l1 and l2, floats as fractions of the LLM depth, ints as layer indices.
    ``temperature`` / ``iterations``: PageRank's τ and power iterations."""

    keep: float | int = 0.25
    weighted: bool = True
    preserve_order: bool = True
    prune: bool = True
    prune_start: float | int = 14 / 28
    prune_end: float | int = 22 / 28
    temperature: float = 0.1
    iterations: int = 5

    def validate(self) -> None:
        super().validate()
        for name in ("weighted", "preserve_order", "prune"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("prune_start", "prune_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    isinstance(value, float) and value > 1):
                raise ValueError(f"{name} must be a fraction of depth in [0, 1] or a layer index >= 0, got {value!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {self.iterations!r}")


@register_reducer("aim")
class AIM(Reducer):
    """Similarity merging before the LLM, then PageRank pruning inside it (linear schedule l1→l2)."""

    config_class = AIMConfig

    def plan(self, visual: VisualTokens) -> list[MergedView]:
        plans = []
        for features, view in zip(visual.features, visual.views):
            patches = features[view.n_prefix:]
            merged = merge_to(patches, self.budget(view), self.config.weighted, self.config.preserve_order)
            # Slots are taken in sorted order; with the reference's scrambled order the features
            # fill them in emitted order, as its contiguous renumbering did.
            plans.append(MergedView(merged.index.sort().values, merged.features))
        return plans

    def schedule(self, n_layers: int) -> tuple[int, int]:
        start = resolve_layer(self.config.prune_start, n_layers)
        end = resolve_layer(self.config.prune_end, n_layers)
        if not 0 <= start < end <= n_layers:
            raise ValueError(f"AIM needs 0 <= prune_start < prune_end <= {n_layers} layers, got {start} and {end}")
        return start, end

    def retention(self, layer: int, n_layers: int) -> float:
        """Fraction of the LLM's input visual tokens that layer ``layer`` still sees."""
        start, end = self.schedule(n_layers)
        return min(1.0, max(0.0, 1.0 - (layer - start) / (end - start)))

    def llm_layers(self, n_layers: int) -> list[int]:
        if not self.config.prune:
            return []
        start, end = self.schedule(n_layers)
        # Selection after layer l uses l's attention and applies from layer l + 1 (the engine's K).
        return [k for k in range(max(start + 1, 1), end + 1) if k < n_layers]

    def llm_select(self, context) -> list[torch.Tensor]:
        importance = context.attention.pagerank(self.config.temperature, self.config.iterations)  # (B, n)
        fraction = self.retention(context.layer, context.n_layers)
        chosen = []
        for b in range(importance.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            k = min(len(visual), math.floor(fraction * int(context.n_visual_input[b]) + 0.5))
            chosen.append(visual[keep_topk_in_order(importance[b, visual], k)] if k else visual[:0])
        return chosen
