"""CDPruner: a conditional determinantal point process over each view's tokens, MAP by greedy inference.

Paper: "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs",
Zhang et al., NeurIPS 2025, arXiv 2506.10967 (code: Theia-4869/CDPruner, Apache-2.0).

Algorithm (per view), on the ``N`` projected patch features ``x_i`` and the instruction's ``T`` text
embeddings ``e_t``:

1. similarity ``S_ij = cos(x_i, x_j)``;
2. relevance ``r_i = mean_t cos(x_i, e_t)``, min–max normalised over the view to [0, 1], then
   ``q_i = exp(α r_i)`` with ``α = θ / (2 (1 - θ))`` (θ = ``theta``; θ = 1 uses ``q_i = r_i``);
3. the conditional kernel ``L = diag(q) · S · diag(q)``;
4. keep the ``k`` tokens of the greedy MAP of the DPP with kernel ``L``
   (:func:`vtr.ops.diversity.dpp_greedy_map`), in raster order.

Deviations from the reference code:
- Relevance uses the LLM's own input embeddings of the instruction (``Signal.PROMPT_EMBEDDINGS``:
  the text after the image, in the projected features' space). The reference's LLaVA path uses CLIP's
  text encoder and image embeddings, and there **negates** the relevance (a property of CLIP's joint
  space it reports); ``negate=True`` applies that sign here. No family here ships a CLIP text tower.
- Greedy MAP stops adding by gain once the kernel's rank is spent (more picks than feature dimensions)
  and fills the rest by quality ``q_i``; the reference would divide by zero there.
- Per view (per AnyRes view, per video frame); batches of any size (the reference's batch loop shares
  one text query).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig, check_bool, check_float
from vtr.ops.diversity import cosine_matrix, dpp_greedy_map
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer
from vtr.signals import Signal
from vtr.visual import VisualTokens


@dataclass
class CDPrunerConfig(ReducerConfig):
    """``theta``: the weight of relevance against diversity, in (0, 1] (0.5: the reference's default).
    ``negate``: use ``-cos`` as relevance (the reference's sign for CLIP embeddings)."""

    theta: float = 0.5
    negate: bool = False

    def validate(self) -> None:
        super().validate()
        self.normalise("theta", check_float(self.theta, "theta", 0.0, 1.0, low_open=True))
        self.normalise("negate", check_bool(self.negate, "negate"))


def relevance(features: torch.Tensor, text: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """``(N, D)`` features, ``(T, D)`` text embeddings → ``(N,)`` mean cosine, min–max normalised to [0, 1]."""
    r = cosine_matrix(features, text).mean(dim=1)
    r = -r if negate else r
    return (r - r.min()) / (r.max() - r.min() + 1e-6)


def conditional_kernel(features: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """``L = diag(q) · S · diag(q)`` with ``S`` the cosine similarity of ``features`` ``(N, D)`` → ``(N, N)``."""
    return quality[:, None] * cosine_matrix(features) * quality[None, :]


@register_reducer("cdpruner")
class CDPruner(Reducer):
    """Conditional DPP: similarity kernel weighted by relevance to the instruction, greedy MAP selection."""

    config_class = CDPrunerConfig
    reads = (Signal.PROMPT_EMBEDDINGS,)

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        plans = []
        theta = float(self.config.theta)
        for view, features, text in zip(visual.views, visual.features, visual.signal(Signal.PROMPT_EMBEDDINGS)):
            k = self.budget(view)
            patches = features[view.n_prefix:]
            r = relevance(patches, text, self.config.negate)
            quality = r if theta == 1.0 else torch.exp(theta / (2 * (1 - theta)) * r)
            plans.append(dpp_greedy_map(conditional_kernel(patches, quality), k).sort().values)
        return plans
