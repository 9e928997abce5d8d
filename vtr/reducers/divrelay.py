"""divrelay (vtr's own method): a salient, diverse pool of the budget's size, each pooled token carrying the
mean of the patches most like it and drawing their attention mass (proportional attention); optionally a
larger pool relayed through the LLM's first layers, then cut.

Not a published method: designed in this project (issue 17), tuned only on ``vtr.shapes.calibration_set``
(2,000 calibration questions, ``calibration_set(400)``) and measured on the held-out ``vtr.shapes.test_set``
(``BENCHMARKS.md``: the accuracy table, the ``divrelay_ablation`` section and its salience sweep). No
deviations to list: there is no reference implementation. Proportional attention is the idea of ToMe
(Bolya et al., ICLR 2023, §3: ``softmax(q·k/√d + log s)``), used there inside a ViT; here inside the LLM.

**What ``keep`` counts**: the *total* budget, as for ``aim`` and ``atp``: the mean over the ``L`` decoder
layers of the visual tokens each processes (``stats.layer_share``), as a share of the row's patches. A row
of ``N`` patches gets ``k = keep_count(keep, N)`` (rounded half up, at least 1; an int ``keep`` is ``k``
itself, clamped to ``N``), i.e. ``L·k`` token-layers: exactly what a pre-LLM reducer keeping ``k`` spends.

**Cost formula.** With ``K = layer`` and ``c(p) = keep_count(final, p)`` (the tokens kept from layer ``K``
on out of a pool of ``p``), the pool is the largest ``P <= N`` with ``K·P + (L - K)·c(P) <= L·k``
(:func:`pool_size`; ``P >= k`` always; ``final=1.0``, the default, gives ``P = k`` and no cut). Layers
``0 .. K-1`` process ``P`` visual tokens, layers ``K .. L-1`` process ``F = c(P)``, so ::

    layer share = (K·P + (L - K)·F) / (L·N)  <=  k / N

(the defaults: ``k / N`` exactly, DivPrune's cost: 14/144 = 0.0972 at keep 0.1 on the tiny LLaVA. With the
relay, ``final=0.7, layer=2``, keep 0.1: P = 16, F = 11, share 54/576 = 0.0938; keep 0.05: P = 8, F = 6,
28/576 = 7/144). A row of several views (AnyRes, video frames) shares ``P`` among them in proportion to
their patches (largest remainder, ties to the first view; at least 1 per view, as ``keep_count``, which
exceeds ``P`` only where ``P`` is below the row's number of views). Where ``P`` reaches ``N`` (large ``keep``) the
share stays below ``k / N``. ``keep=1.0`` pools every patch, merges nothing and cuts nothing: the identity.

Steps (per view, before the LLM; per batch row, inside it):

1. **Pool** (:func:`diverse_pool`): the view's share of ``P`` patches. Each patch's *distinctiveness* is its
   mean cosine distance to the view's patches (a patch unlike most of the image belongs to an object, not
   to the background); the greedy takes the most distinctive patch, then each time the patch maximising
   ``distinctiveness^salience · (its smallest cosine distance to the pool)``. ``salience=0``: DivPrune's
   plain max–min greedy (:func:`vtr.ops.diversity.max_min_diverse`); ``pool="grid"``: evenly spaced (an ablation).
2. **Merge** (``merge=True``): every patch left out joins its most cosine-similar pooled patch (ties: the
   lowest-index one) and each pooled token's feature becomes the plain mean of itself and its joiners; the
   token keeps its own slot and position (:func:`merge_into_nearest`).
3. **Proportional attention** (``proportional=True``, with the merge): a pooled token holding ``s`` patches
   gets ``log s`` added to its attention logit as a key, for every query of every decoder layer, in the
   prefill and every decode step (:mod:`vtr.engine.proportional`), so it draws the attention ``s`` such
   patches would. It needs ``sdpa`` or ``eager`` attention (a flash-attention model is refused: it takes no
   additive mask).
4. Only with ``final < 1``: **relay** through decoder layers ``0 .. K-1``, then **keep diverse** before
   layer ``K``: greedily keep ``F`` of the pooled tokens, each step the token maximising
   ``r_i / max r · d_i^β``, ``d_i`` its smallest cosine distance to the kept ones on the hidden states
   entering layer ``K`` (β = ``diversity``; the first pick is the most relevant). ``relevance`` sets ``r``:
   ``"none"`` (``r = 1``), ``"instruction"`` (the attention each token receives from the text after the
   image at layer ``K - 1``, recomputed from its q/k, without the size bias) or ``"last"`` (the last
   token's row, FastV's). An int ``keep`` of at least ``P`` skips the cut (its budget allows it).

**Why it works.** At 5–10 % three things decide what survives. *Coverage*: rules that look only at
importance keep near-duplicates of one salient region and lose whole objects; max–min diversity spreads
the pool over every distinct region (DivPrune beats [CLS] attention here), and weighting it by
distinctiveness spends fewer picks on background clutter, which is diverse too but rarely asked about.
*Nothing is thrown away unread*: a pruned patch's content is lost to every layer, while merging folds it
into the pooled token most like it. *Mass*: the LLM reads "how many" and "is there" from how much
attention a kind of patch draws; after a plain merge a token standing for nine patches draws as much as
one, so the counts the model learned on full images are off; the ``log s`` bias restores each cluster's
share of the softmax exactly (for identical patches) at no token and no layer cost. A relay (a larger
pool read by the first layers, then cut) was the first design: at a *fixed* budget the pool can only be
a few tokens larger than ``k``, and on the calibration set it added nothing, so it is off by default
(``final=1.0``). The ablation (``benchmarks/divrelay_ablation.py``, every variant at the same budget)
shows each part.

Scoring cost (defaults): DivPrune's (one ``N × N`` cosine matrix and a ``k``-step greedy, here with the
row means of that matrix as weights) plus, for the merge, a gather of that matrix's ``N × k`` columns, an
argmax and a scatter-mean; proportional attention adds the placement of the sizes and, in each decoder
step, one additive ``(B, 1, q, kv)`` mask (the model's own mask when it has one, built once per step
and shared by the layers). With the relay: a ``P``-pick greedy, the merge, one ``P × P`` cosine matrix of
the pool's hidden states and an ``F``-step greedy (plus, with ``relevance="instruction"``, the
instruction's attention rows of one layer). Measured in ``BENCHMARKS.md`` (scoring overhead section).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig, check_bool, check_choice, check_float, check_int, check_layer
from vtr.ops.diversity import cosine_matrix, max_min_diverse
from vtr.ops.selection import keep_count
from vtr.probes.decoder import LayerAttention
from vtr.reducers.base import MergedView, Reducer
from vtr.registry import register_reducer
from vtr.visual import VisualTokens

RELEVANCE = ("instruction", "last", "none")
POOL_RULES = ("diverse", "grid")


@dataclass
class DivRelayConfig(ReducerConfig):
    """``keep``: the total budget, the mean share (or count) of each row's visual tokens per decoder layer.
    ``pool``: how the pool is chosen: ``"diverse"`` (greedy max–min of the features) or ``"grid"`` (evenly
    spaced in raster order; an ablation).
    ``final``: share of the pool kept from decoder layer ``layer`` on (1.0, the default = no cut: the pool is
    ``keep``; below 1 the pool grows to the budget and relays through layers ``0 .. layer-1``).
    ``merge``: each patch left out of the pool is averaged into its most similar pooled token (False: dropped).
    ``layer``: K, the first decoder layer on the kept tokens (>= 1).
    ``diversity``: β, the exponent of the distance term (0 = relevance top-k).
    ``relevance``: ``"none"`` (diversity only), ``"instruction"`` (mean attention from the text after the
    image) or ``"last"`` (the last token's row).
    ``salience``: the exponent of each patch's distinctiveness (mean cosine distance to the view) weighing
    the pool's max–min greedy (0 = DivPrune's plain greedy).
    ``proportional``: merged tokens add ``log size`` to their attention logits (needs sdpa/eager attention)."""

    keep: float | int = 0.1
    pool: str = "diverse"
    final: float = 1.0
    layer: int = 2
    merge: bool = True
    diversity: float = 1.0
    relevance: str = "none"
    salience: float = 1.0
    proportional: bool = True

    def validate(self) -> None:
        super().validate()
        info = self.model_info
        self.normalise("final", check_float(self.final, "final", 0.0, 1.0, low_open=True))
        # the relay layer is checked against the model's depth only when there is a relay (final < 1)
        relay_depth = info.llm_layers if info and self.final < 1 else None
        self.normalise("layer", check_layer(check_int(self.layer, "layer", low=1), "layer",
                                            depth=relay_depth, low=1, fractions=False))
        self.normalise("merge", check_bool(self.merge, "merge"))
        self.normalise("diversity", check_float(self.diversity, "diversity", low=0.0))
        check_choice(self.relevance, "relevance", RELEVANCE)
        check_choice(self.pool, "pool", POOL_RULES)
        self.normalise("salience", check_float(self.salience, "salience", low=0.0))
        self.normalise("proportional", check_bool(self.proportional, "proportional"))


def pool_size(n: int, budget: int, final: float, layer: int, n_layers: int) -> int:
    """``P``: the largest pool ``p <= n`` with ``layer·p + (n_layers - layer)·keep_count(final, p) <= n_layers·budget``.

    ``p = budget`` always fits (the cut keeps at most ``p``), so ``P >= budget``; ``final=1.0`` gives ``budget``.
    """
    rest = n_layers - layer
    best = min(budget, n)
    for p in range(best + 1, n + 1):
        if layer * p + rest * keep_count(final, p) <= n_layers * budget:
            best = p
    return best


def grid_picks(n: int, k: int) -> torch.Tensor:
    """``(k,)`` evenly spaced indices of ``n``: ``floor((i + 0.5)·n / k)``, ``i < k``."""
    return torch.tensor([(2 * i + 1) * n // (2 * k) for i in range(k)], dtype=torch.long)


def split_pool(total: int, sizes: list[int]) -> list[int]:
    """``total`` pooled tokens shared by views of ``sizes`` patches in proportion (largest remainder, ties to
    the first view); each share is at most its view's size."""
    n = sum(sizes)
    if n == 0:
        return [0] * len(sizes)
    shares = [total * s // n for s in sizes]
    order = sorted(range(len(sizes)), key=lambda v: (-(total * sizes[v] % n), v))
    for v in order[:total - sum(shares)]:
        shares[v] += 1
    return shares


def merge_into_nearest(patches: torch.Tensor, picks: torch.Tensor,
                       similarity: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, D)`` features and ``(k,)`` sizes: each picked patch's feature averaged (equal weights) with the
    unpicked patches whose most cosine-similar picked patch it is (ties: the first pick in ``picks``' order),
    and how many patches each average holds (itself included).

    Args:
        patches: ``(N, D)``; picks: ``(k,)`` distinct indices; similarity: the ``(N, N)`` cosine matrix of
            ``patches`` when already computed (the pool's max–min greedy needs it too), else computed here.
    """
    near = cosine_matrix(patches, patches[picks]) if similarity is None else similarity[:, picks]
    owner = near.argmax(dim=1)  # (N,) the pick each patch joins
    owner[picks] = torch.arange(len(picks), device=owner.device)  # a pick is its own cluster's centre
    merged = torch.zeros(len(picks), patches.shape[1], device=patches.device).index_add_(0, owner, patches.float())
    sizes = torch.bincount(owner, minlength=len(picks))
    return (merged / sizes[:, None]).to(patches.dtype), sizes


def relevant_diverse(relevance: torch.Tensor, distance: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    """Greedy: the most relevant first, then argmax ``r / max r · d^β`` (``d``: min distance to the kept).

    Args:
        relevance: ``(n,)`` non-negative; distance: ``(n, n)`` non-negative, e.g. ``1 - cosine``; k: ``1 <= k``.
    Returns:
        ``(min(k, n),)`` sorted indices.
    """
    n = relevance.shape[0]
    if k >= n:
        return torch.arange(n)
    r = relevance.float() / relevance.float().max().clamp_min(1e-12)
    picks = [int(r.argmax())]  # argmax: the first index among ties
    taken = torch.zeros(n, dtype=torch.bool)
    taken[picks[0]] = True
    nearest = distance[picks[0]].clone()
    for _ in range(k - 1):
        gain = r * (nearest if beta == 1 else nearest.pow(beta)) if beta > 0 else r.clone()
        j = int(gain.masked_fill_(taken, -float("inf")).argmax())
        picks.append(j)
        taken[j] = True
        nearest = torch.minimum(nearest, distance[j])
    return torch.tensor(sorted(picks), dtype=torch.long)


def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """``(n, D)`` → ``(n, n)`` ``1 - cos``, clamped at 0 (rounding)."""
    return (1.0 - cosine_matrix(x)).clamp_min(0.0)


def diverse_pool(similarity: torch.Tensor, k: int, salience: float) -> torch.Tensor:
    """``(k,)`` sorted pool picks of one view: distinctiveness-weighted max–min diversity.

    Each patch's distinctiveness is its mean distance to the view's patches (a patch unlike most of the image
    is foreground); the greedy takes the most distinctive patch first, then the one maximising
    ``distinctiveness^salience · (min distance to the pool)``. ``salience=0``: DivPrune's max–min greedy
    (:func:`vtr.ops.diversity.max_min_diverse`, its own first pick).
    """
    if salience <= 0:
        return max_min_diverse(1.0 - similarity, k).sort().values
    distance = (1.0 - similarity).clamp_min(0.0)
    return relevant_diverse(distance.mean(dim=1).pow(salience), distance, k, 1.0)


@register_reducer("divrelay")
class DivRelay(Reducer):
    """vtr's method: a salient diverse pool of the budget, left-out patches merged in, attention by cluster size.

    Each left-out patch is averaged into its most similar pooled token, which then draws the attention mass
    of its cluster (proportional attention); optionally relayed through the first LLM layers, then cut;
    ``keep`` is the total budget."""

    config_class = DivRelayConfig

    def depth(self) -> int:
        return self.llm_depth("divrelay sizes its pool")

    def identity(self) -> bool:
        keep = self.config.keep
        return (isinstance(keep, float) and keep >= 1.0) or float(self.config.final) >= 1.0

    def pool_counts(self, visual: VisualTokens) -> list[int]:
        """Per view: its share of its row's pool ``P`` (:func:`pool_size` on the row's patches)."""
        n_layers = self.depth()
        rows: dict[int, list[int]] = {}
        for v, view in enumerate(visual.views):
            rows.setdefault(view.sample, []).append(v)
        counts = [0] * len(visual.views)
        for members in rows.values():
            sizes = [visual.views[v].n_patches for v in members]
            n = sum(sizes)
            budget = keep_count(self.config.keep, n)
            if self.identity():
                total = budget
            else:
                total = pool_size(n, budget, float(self.config.final), self.config.layer, n_layers)
            for v, share in zip(members, split_pool(total, sizes)):  # at least 1 per view, as keep_count
                counts[v] = max(share, 1) if visual.views[v].n_patches else 0
        return counts

    def plan(self, visual: VisualTokens) -> list[torch.Tensor | MergedView]:
        config = self.config
        plans = []
        for x, k in zip([f[v.n_prefix:] for f, v in zip(visual.features, visual.views)], self.pool_counts(visual)):
            if k >= len(x):
                plans.append(torch.arange(len(x)))
                continue
            similarity = None  # one cosine matrix per view serves the pool's greedy and the merge
            if config.pool == "grid":
                picks = grid_picks(len(x), k)
            else:
                similarity = cosine_matrix(x)
                picks = diverse_pool(similarity, k, float(config.salience))
            if not config.merge:
                plans.append(picks)
                continue
            features, sizes = merge_into_nearest(x, picks, similarity)
            plans.append(MergedView(picks, features, sizes=sizes if config.proportional else None))
        return plans

    def llm_layers(self, n_layers: int) -> list[int]:
        if self.identity():  # no cut inside the LLM (final=1.0, the default, or keep=1.0): no layer to check
            return []
        if self.config.layer >= n_layers:
            raise ValueError(f"layer={self.config.layer} must be below the LLM's {n_layers} layers")
        return [self.config.layer]

    def row_budget(self, n_pooled: int) -> int:
        """Tokens a row keeps from ``layer`` on: ``final`` of its ``n_pooled`` pooled tokens (rounded half up,
        at least 1); an int ``keep`` at least the pool keeps it all (the budget allows it)."""
        keep = self.config.keep
        if isinstance(keep, int) and keep >= n_pooled:
            return n_pooled
        return keep_count(float(self.config.final), n_pooled)

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
            picks = relevant_diverse(relevance, cosine_distance(context.hidden[b, visual]), k, float(self.config.diversity))
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
