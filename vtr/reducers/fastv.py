"""FastV: drop the visual tokens the last prompt token attends to least, after layer K.

Paper: "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", Chen et al., ECCV 2024, arXiv 2403.06764 (code: pkunlp-icler/FastV).

Algorithm: at prefill, take layer ``K-1``'s attention probabilities (head mean) of the last prompt
token, restricted to the visual tokens; keep the top ``keep`` of them (sorted) and drop the rest
from layer ``K`` on (hidden states, positions, KV cache). Kept tokens keep their original position
ids; decoding continues from the unpruned length. Defaults K = 2, keep = 0.5 (the paper's R = 50 %).

Deviations from the reference code:
- The attention row is recomputed from layer ``K-1``'s q/k (RoPE applied) instead of running that
  layer eagerly with ``output_attentions``; the values are the same (tested against eager).
- ``keep`` is per batch row, over all of the row's visual tokens (the reference runs batch 1 with a
  single image span); any batch size works.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.reducers.base import Reducer
from vtr.config import ReducerConfig, check_int, check_layer
from vtr.registry import register_reducer
from vtr.ops.selection import keep_count, keep_topk_in_order


@dataclass
class FastVConfig(ReducerConfig):
    """``keep``: fraction (or count) of each row's visual tokens kept from layer ``layer`` on.
    ``layer``: K, the first decoder layer that runs on the kept tokens (an int, 1 ≤ K < the LLM's depth).
    Counts round half up (``keep_count``); ``keep=1.0`` or a count ≥ the row's visual tokens keeps all."""

    keep: float | int = 0.5
    layer: int = 2

    def validate(self) -> None:
        super().validate()
        info = self.model_info
        depth = info.llm_layers if info else None
        # K = 0 would prune before any attention exists; K = depth would prune after the last layer
        self.normalise("layer", check_layer(check_int(self.layer, "layer", low=1), "layer", depth=depth, low=1,
                                                fractions=False))


@register_reducer("fastv")
class FastV(Reducer):
    """Inside the LLM: keep the visual tokens the last token attends to most at layer K-1 (baseline)."""

    config_class = FastVConfig

    def llm_layers(self, n_layers: int) -> list[int]:
        if self.config.layer >= n_layers:
            raise ValueError(f"layer={self.config.layer} must be below the LLM's {n_layers} layers")
        return [self.config.layer]

    def llm_select(self, context) -> list[torch.Tensor]:
        scores = context.attention.last_row()  # (B, n)
        chosen = []
        for b in range(scores.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            k = keep_count(self.config.keep, int(context.n_visual_input[b]))
            chosen.append(visual[keep_topk_in_order(scores[b, visual], min(k, len(visual)))])
        return chosen
