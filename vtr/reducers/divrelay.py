"""divrelay (vtr's own method): a diverse pool relays the image to the text in the LLM's first layers,
then a diverse subset of the relayed tokens stays.

Not a published method: designed in this project (issue 17), tuned only on ``vtr.shapes.calibration_set``
and measured on the held-out ``vtr.shapes.test_set`` (``BENCHMARKS.md``: the accuracy table and the
``divrelay`` ablation).

Why it works. On small budgets two things decide what survives. *Coverage*: rules that look only at
importance keep near-duplicates of the same salient region and lose whole objects (DivPrune's max–min
diversity beats [CLS] attention at 5–10 % here). *Reading before dropping*: text tokens that follow the
image attend to every visual token in the layers before a cut, so what they read there stays in their
hidden states after the visual tokens are gone (why FastV, which cuts after layer 2, holds up at 5 %, at
the price of running all 144 tokens through two of the four layers). divrelay gets both for a fraction of
the cost:

1. **Pool, before the LLM** (per view): ``pool`` × the view's patches (default 0.25), chosen by greedy
   max–min diversity of the projected features (:func:`vtr.ops.diversity.max_min_diverse`, DivPrune's
   rule). Only the pool enters the LLM.
2. **Relay**: decoder layers ``0 .. layer-1`` (default ``layer=2``) run on the pool, so the instruction's
   tokens read all of it.
3. **Keep diverse, before layer** ``layer``: greedily keep ``keep`` × the original patches, each step the
   token maximising ``r_i / max r · d_i^β``, ``d_i`` its smallest cosine distance to the kept ones on the
   hidden states entering layer ``layer`` (β = ``diversity``, default 1; the first pick is the most
   relevant). ``relevance`` sets ``r``: ``"none"`` (default: ``r = 1``, pure diversity, the first pick the
   first pooled token), ``"instruction"`` (the attention each token receives from the text after the
   image at layer ``layer - 1``, recomputed from its q/k) or ``"last"`` (the last token's row, FastV's).
   On the calibration set the question signal did not add to diversity (see the ablation), so it is off
   by default.

Cost: the first ``layer`` decoder layers process the pool, the others ``keep``; the layer share is
``(layer · pool + (L - layer) · keep) / L`` of the visual tokens (0.15 at keep 0.05 on the 4-layer
tiny LLaVA, FastV 0.52). Scoring is one max–min greedy over the view's features, one cosine matrix of
the pool's hidden states and a ``keep``-step greedy (plus, with ``relevance="instruction"``, the
instruction's attention rows of one layer).

Ablations are settings: ``pool=1.0`` (no pool), ``layer=1`` (a shorter relay), ``diversity=0`` (no
final diversity: with ``relevance="none"`` the first pooled tokens), ``relevance="instruction"``;
``pool=keep`` with no final cut is DivPrune.

``keep`` counts the view's original patches (like every reducer); in the LLM it is applied per batch
row as ``keep / pool`` of the row's pooled tokens (an int ``keep`` there counts per row, as FastV's).
``keep=1.0`` raises the pool to every patch and keeps them all: the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig, check_choice, check_float, check_int, check_layer
from vtr.ops.diversity import cosine_matrix, first_argmax, max_min_per_view
from vtr.ops.selection import keep_count
from vtr.probes.decoder import LayerAttention
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer
from vtr.visual import VisualTokens

RELEVANCE = ("instruction", "last", "none")


@dataclass
class DivRelayConfig(ReducerConfig):
    """``keep``: share (or count) of each view's patches kept from decoder layer ``layer`` on.
    ``pool``: share of each view's patches entering the LLM (raised to ``keep`` when below it; 1.0 = no pool).
    ``layer``: K, the first decoder layer on the kept tokens (>= 1).
    ``diversity``: β, the exponent of the distance term (0 = relevance top-k).
    ``relevance``: ``"none"`` (diversity only), ``"instruction"`` (mean attention from the text after the
    image) or ``"last"`` (the last token's row)."""

    keep: float | int = 0.1
    pool: float = 0.25
    layer: int = 2
    diversity: float = 1.0
    relevance: str = "none"

    def validate(self) -> None:
        super().validate()
        info = self.model_info
        self.normalise("pool", check_float(self.pool, "pool", 0.0, 1.0, low_open=True))
        self.normalise("layer", check_layer(check_int(self.layer, "layer", low=1), "layer",
                                            depth=info.llm_layers if info else None, low=1, fractions=False))
        self.normalise("diversity", check_float(self.diversity, "diversity", low=0.0))
        check_choice(self.relevance, "relevance", RELEVANCE)


def relevant_diverse(relevance: torch.Tensor, vectors: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    """Greedy: the most relevant first, then argmax ``r / max r · d^β`` (``d``: min cosine distance to the kept).

    Args:
        relevance: ``(n,)`` non-negative; vectors: ``(n, D)``; k: ``1 <= k``.
    Returns:
        ``(min(k, n),)`` sorted indices.
    """
    n = relevance.shape[0]
    if k >= n:
        return torch.arange(n)
    r = relevance.float() / relevance.float().max().clamp_min(1e-12)
    distance = (1.0 - cosine_matrix(vectors)).clamp_min(0.0)
    picks = [first_argmax(r)]
    nearest = distance[picks[0]].clone()
    for _ in range(k - 1):
        gain = r * nearest.pow(beta) if beta > 0 else r.clone()
        gain[picks] = -float("inf")
        j = first_argmax(gain)
        picks.append(j)
        nearest = torch.minimum(nearest, distance[j])
    return torch.tensor(sorted(picks), dtype=torch.long)


@register_reducer("divrelay")
class DivRelay(Reducer):
    """vtr's method: a diverse pool read by the LLM's first layers, then a diverse subset of it (layer 2)."""

    config_class = DivRelayConfig

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        patches = [f[v.n_prefix:] for f, v in zip(visual.features, visual.views)]
        counts = [max(keep_count(self.pool_share(), v.n_patches), self.budget(v)) for v in visual.views]
        return max_min_per_view(patches, counts)

    def llm_layers(self, n_layers: int) -> list[int]:
        if self.config.layer >= n_layers:
            raise ValueError(f"layer={self.config.layer} must be below the LLM's {n_layers} layers")
        return [self.config.layer]

    def pool_share(self) -> float:
        keep = self.config.keep
        return max(float(self.config.pool), keep) if isinstance(keep, float) else float(self.config.pool)

    def row_budget(self, n_pooled: int) -> int:
        """Tokens a row keeps from ``layer`` on: ``keep / pool`` of its pooled tokens (an int ``keep``: per row)."""
        keep = self.config.keep
        if isinstance(keep, float):
            return keep_count(min(1.0, keep / self.pool_share()), n_pooled)
        return min(keep, n_pooled)

    def llm_select(self, context) -> list[torch.Tensor]:
        attention: LayerAttention = context.attention
        mode = self.config.relevance
        last = attention.last_row() if mode == "last" else None  # (B, n)
        chosen = []
        for b in range(context.visual.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            if len(visual) == 0:
                chosen.append(visual)
                continue
            k = self.row_budget(int(context.n_visual_input[b]))
            if mode == "instruction":
                relevance = self.instruction_attention(attention, context, b)[visual]
            elif mode == "last":
                relevance = last[b, visual]
            else:
                relevance = torch.ones(len(visual))
            picks = relevant_diverse(relevance, context.hidden[b, visual], k, float(self.config.diversity))
            chosen.append(visual[picks])
        return chosen

    @staticmethod
    def instruction_attention(attention: LayerAttention, context, b: int) -> torch.Tensor:
        """``(n,)`` mean (over the instruction's tokens and heads) attention row of batch row ``b``."""
        text = context.text[b].clone()
        visual = context.visual[b].nonzero().squeeze(1)
        text[: int(visual.max()) + 1] = False
        rows = text.nonzero().squeeze(1)
        if len(rows) == 0:  # nothing follows the media: the last valid token asks
            rows = (context.text[b] | context.visual[b]).nonzero().squeeze(1)[-1:]
        one = LayerAttention(attention.q[b:b + 1], attention.k[b:b + 1], attention.scaling,
                             attention.cols[b:b + 1], attention.key_valid[b:b + 1])
        return one.probs(rows[None]).mean(dim=(1, 2))[0]  # (n,)
