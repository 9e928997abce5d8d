"""DART: keep a few pivot tokens, then the tokens least duplicated with the pivots.

Paper: "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
Wen et al., arXiv 2502.11494 (code: ZichenWen1/DART, Apache-2.0).

The rule, given candidate visual tokens ``x_i``, a budget ``k`` and pivot tokens:

1. the image pivots (visual tokens with the largest L1 key norm) are kept;
2. the rest of the budget is split evenly over all pivots (image and text), the first pivots taking
   one more when it does not divide; pivot by pivot, the still-unchosen visual tokens with the
   **lowest** cosine similarity to that pivot are added.

Two placements:

- ``dart`` (the paper's method): inside the LLM, before decoder layer ``K`` (default 2). Pivots are
  ranked by the L1 norm of layer ``K-1``'s keys (``pivot_image`` visual tokens and ``pivot_text`` of the
  instruction's text tokens, those after the last visual token; 4 + 4 by default, the reference's LLaVA
  setting), and similarities are between the hidden states entering layer ``K``. ``keep`` is per batch
  row over all its visual tokens (as in :mod:`vtr.reducers.fastv`).
- ``dart_pre`` (a pre-LLM variant; not the paper's placement): per view, on the projected features
  the LLM would see, ``pivots`` image pivots (default 8) ranked by the features' L1 norm, no text pivots.

Deviations from the reference code:
- Exactly ``keep`` tokens are kept: the reference gives each pivot ``⌊budget / pivots⌋`` tokens *on top
  of* the image pivots (128 + 4 on LLaVA-1.5 at 128).
- Pivots are visited in a fixed order (image pivots by decreasing norm, then text pivots); the
  reference walks a Python ``set``, whose order is arbitrary.
- Keys are taken after RoPE (as the model's cache holds them, KV heads repeated: the ranking is the
  same) and the hidden states are compared without the final RMSNorm the reference applies to them.
- Tokens are physically dropped from layer ``K`` on (hidden states, positions, KV cache, as FastV);
  batches of any size (the reference runs batch 1 with one image span). Rows of equal length select
  exactly as alone; under left padding the hidden states move by float noise (~1e-8), which can flip a
  near-tie of the similarity ranking (as any rule ranking decoder states would).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig, check_int, check_layer
from vtr.ops.diversity import cosine_matrix
from vtr.ops.selection import keep_count
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer
from vtr.visual import VisualTokens


def least_duplicated(features: torch.Tensor, image_pivots: torch.Tensor, text_pivots: torch.Tensor, k: int) -> torch.Tensor:
    """DART's selection over one candidate set.

    Args:
        features: ``(n, D)`` the candidates' vectors; image_pivots: ``(p,)`` candidate indices, in
            visiting order (kept); text_pivots: ``(t, D)`` extra pivot vectors (not candidates); k: budget.
    Returns:
        ``(min(k, n),)`` sorted candidate indices.
    """
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    image_pivots = image_pivots[:k]
    chosen = image_pivots.tolist()
    available = torch.ones(n, dtype=torch.bool)
    available[image_pivots] = False
    pivots = torch.cat([features[image_pivots].float(), text_pivots.float()])
    if len(pivots) == 0:
        raise ValueError("DART needs at least one pivot (pivot_image or pivot_text >= 1)")
    remaining = k - len(chosen)
    similarity = cosine_matrix(pivots, features)  # (P, n)
    for i in range(len(pivots)):
        quota = remaining // len(pivots) + (1 if i < remaining % len(pivots) else 0)
        if quota == 0:
            continue
        scores = similarity[i].masked_fill(~available, float("inf"))
        picks = torch.sort(scores, stable=True).indices[:quota]  # least similar first, ties: lower index
        available[picks] = False
        chosen += picks.tolist()
    return torch.tensor(sorted(chosen), dtype=torch.long)


def top_l1(vectors: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the ``m`` rows of ``(n, D)`` with the largest L1 norm, by decreasing norm (ties: lower index)."""
    norms = vectors.float().abs().sum(dim=-1)
    return torch.sort(norms, descending=True, stable=True).indices[:m]


@dataclass
class DARTConfig(ReducerConfig):
    """``keep``: share (or count) of each row's visual tokens kept from layer ``layer`` on (default 128/576,
    the paper's 77.8 % reduction). ``layer``: K, the first decoder layer on kept tokens (>= 1).
    ``pivot_image`` / ``pivot_text``: pivots among the visual tokens / the instruction's text tokens."""

    keep: float | int = 128 / 576
    layer: int = 2
    pivot_image: int = 4
    pivot_text: int = 4

    def validate(self) -> None:
        super().validate()
        info = self.model_info
        self.normalise("layer", check_layer(check_int(self.layer, "layer", low=1), "layer",
                                            depth=info.llm_layers if info else None, low=1, fractions=False))
        self.normalise("pivot_image", check_int(self.pivot_image, "pivot_image", low=0))
        self.normalise("pivot_text", check_int(self.pivot_text, "pivot_text", low=0))
        if self.pivot_image + self.pivot_text == 0:
            raise ValueError("pivot_image + pivot_text must be >= 1: DART needs at least one pivot")


@register_reducer("dart")
class DART(Reducer):
    """Inside the LLM (layer 2): keep key-norm pivots and the visual tokens least duplicated with them."""

    config_class = DARTConfig

    def llm_layers(self, n_layers: int) -> list[int]:
        if self.config.layer >= n_layers:
            raise ValueError(f"layer={self.config.layer} must be below the LLM's {n_layers} layers")
        return [self.config.layer]

    def llm_select(self, context) -> list[torch.Tensor]:
        q = context.attention.k  # (B, H, n, d) keys of layer K-1
        keys = q.transpose(1, 2).flatten(2)  # (B, n, H·d)
        chosen = []
        for b in range(keys.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            if len(visual) == 0:  # a text-only row
                chosen.append(visual)
                continue
            k = min(keep_count(self.config.keep, int(context.n_visual_input[b])), len(visual))
            text = context.text[b].clone()
            text[: int(visual.max()) + 1] = False  # the instruction: text after the last visual token
            text = text.nonzero().squeeze(1)
            text_pivots = text[top_l1(keys[b, text], self.config.pivot_text)]
            # with no instruction text to pivot on, one image pivot keeps the rule defined
            n_image = self.config.pivot_image or (0 if len(text_pivots) else 1)
            image_pivots = top_l1(keys[b, visual], n_image)
            hidden = context.hidden[b]
            picks = least_duplicated(hidden[visual], image_pivots, hidden[text_pivots], k)
            chosen.append(visual[picks])
        return chosen


@dataclass
class DARTPreConfig(ReducerConfig):
    """``keep``: share (or count) of each view's patches kept. ``pivots``: image pivots per view."""

    keep: float | int = 128 / 576
    pivots: int = 8

    def validate(self) -> None:
        super().validate()
        self.normalise("pivots", check_int(self.pivots, "pivots", low=1))


@register_reducer("dart_pre")
class DARTPre(Reducer):
    """Before the LLM (a variant): feature-norm pivots and the patches least duplicated with them, per view."""

    config_class = DARTPreConfig

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        plans = []
        for view, features in zip(visual.views, visual.features):
            patches = features[view.n_prefix:]
            pivots = top_l1(patches, self.config.pivots)
            plans.append(least_duplicated(patches, pivots, patches.new_zeros(0, patches.shape[1]), self.budget(view)))
        return plans
