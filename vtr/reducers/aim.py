"""AIM: merge similar visual tokens before the LLM, then prune by PageRank inside it.

Paper: "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning", Zhong et al.,
ICCV 2025, arXiv 2412.03248 (code: LaVi-Lab/AIM).

**What ``keep`` counts**: AIM's *total* budget, the mean over decoder layers of the visual tokens each
layer processes, as a share of the visual tokens before merging (``stats.layer_share``; the same
measure as ``atp``). An int is a count per batch row (visual tokens per layer on average).
``keep=1.0``, or a count at least the row's visual tokens, is the identity (nothing merged, nothing
pruned). The two stages are set by separate knobs and share the budget by one stated rule:

- the pruning schedule (``prune``, ``prune_start`` = l1, ``prune_end`` = l2) fixes ``S``, the mean
  share the schedule alone leaves, over the model's layers (``schedule_share``; 0.66 on 28 layers);
- ``merge``: the merge stage's ratio per view. ``None`` (default) derives it: ``merge = keep / S``
  when ``keep <= S`` (the paper's shape: merge, then prune to zero by l2); above that nothing is
  merged and pruning stops at a floor ``f = 1 - (1 - keep) / (1 - S)`` instead of zero, so the
  total is still ``keep``. An explicit ``merge`` leaves pruning ``keep / merge``, which must be at
  least ``S`` (else pruning cannot keep that little: a ``ValueError`` at patch time);
- ``prune=False``: merging alone meets the budget (``merge = keep``; an explicit ``merge`` must
  then be None).

Stage 1, before the LLM (per view: per image, per AnyRes view, per video frame): iterative
bipartite similarity merging (:mod:`vtr.ops.merge`), each round merging ``min(n // 2, n - target)``
tokens, down to ``target = keep_count(merge, n)`` (rounded half up, at least 1; truncated in
reference mode).

Stage 2, inside the LLM (prefill): after each layer ``l`` in ``[l1, l2)`` the importance of every
token is PageRank on that layer's attention (``v ← v·softmax(logits/τ)``, τ = 0.1, 5 iterations
from ``v = 1/n``, RMS over heads); text tokens are always kept and the visual tokens are cut to
``floor(m · r(l) + 0.5)`` (reference mode: ``int(m · r(l))``) of the ``m`` the LLM received, with the
linear schedule ``r(l) = 1 − (1 − f)·(l − l1)/(l2 − l1)`` (``f = 0``: none left from layer ``l2`` on, the paper's
schedule). Defaults: ``l1, l2`` = 14/28 and 22/28 of the depth (the paper's 14 and 22 on
28-layer Qwen2-7B). Score ties go to the lower position (``keep_topk_in_order``).

**Reference mode** (``reference="llava"``, LLaVA-1.5 only): what the reference's LLaVA-1.5 path
(``CLIPVisionTower.forward`` in its ``other_packages/LLaVA-PruMerge``) does differently, all three at once:

- the merge metric is the *key* projection of the vision tower's **last** encoder layer
  (``encoder.layers[-1].self_attn.k_proj``: layer 23 of CLIP-L, not the feature layer -2), all heads
  side by side (no head mean), [CLS] row dropped (``Signal.TOWER_LAST_KEYS``); the keys are merged
  alongside the features each round, so later rounds match merged keys, as the reference does;
- the merged features are the tower's features *before* the projector (``hidden_states[-2]``,
  ``Signal.PRE_PROJECTOR_FEATURES``); the engine then runs the model's projector on the merged tokens;
- counts truncate: the merge target is ``max(1, int(n·merge))`` (the reference hard-codes its rounds,
  288 + 36 of 576 for 43.75%, 288 + 144 + 72 for 12.5%; both are exact, so either rounding gives
  them) and each pruning layer keeps ``int(m·r(l))`` visual tokens (the reference's ``int(keep_num)``).
  A float ``keep`` enters the merge ratio as given (not first rounded to a count per row).

Families that cannot provide the two signals (all but LLaVA-1.5) refuse the setting at patch time.
The merge arithmetic stays set by ``weighted`` / ``preserve_order`` and the schedule by its knobs, so
the reference's LLaVA-1.5 run (43.75% merged, retain rate ``1 - (l - 12)/8`` after layer ``l >= 13``
of Vicuna-7B's 32) is ``reference="llava", weighted=False, preserve_order=False, merge=0.4375,
prune_start=13, prune_end=21, keep=0.4375 * 17.5 / 32`` (``keep = merge · S``, S = 17.5/32: prune
to zero by layer 21). ``keep=1.0`` stays the identity.

Deviations from the reference code, each configurable back where it matters:
- ``keep`` is the total budget (above); the reference sets the merge ratio and the schedule
  separately and its cost follows from them (``merge=...`` with the reference's schedule does that).
- Merging is size-weighted across rounds (the mass ``Σ size·x`` is conserved) and keeps spatial
  order; the reference takes unweighted per-round means and emits tokens in a scrambled order
  (``weighted=False, preserve_order=False`` reproduce that).
- The merge metric and the merged features are the *projected* features, merged after the
  projector (the reference's video path merges projected features too); its LLaVA-1.5 path uses
  the tower's last-layer keys and pre-projector features (``reference="llava"``, above).
- Counts: vtr rounds half up (``floor(n·r + 0.5)``) where the reference truncates (``int(n·r)``),
  which keeps one more token at about half the pruning layers (``reference="llava"`` truncates).
- Pruning physically drops tokens (hidden states, positions, KV cache), so the speed-up is real;
  the reference only masks attention (and needs eager attention). PageRank is recomputed exactly
  from the layer's q/k, one head at a time.

Differences that remain in every mode (also under ``reference="llava"``):
- PageRank runs on the tokens still present: in the reference, tokens masked at earlier layers stay
  in the sequence as queries, so they still vote (rows of the transition matrix) and count in the
  uniform start ``1/N``; here they are gone. The first pruning layer (nothing masked yet) is the same.
- Precision and ties: similarities, means of the metric and PageRank are float32 here (the reference
  runs them in the model's dtype, fp16), and ties sort stably (the reference's ``argsort`` is not stable).
- The reference's pruning starts from fixed ``boundaries`` (system prompt, image, question) of a
  single-image prompt; vtr finds visual tokens by their placeholder id, any number of images.
- Batches of any size; the reference assumes batch 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtr.config import (ReducerConfig, check_bool, check_choice, check_float, check_int, check_keep, check_layer,
                        resolve_layer)
from vtr.ops.merge import merge_to
from vtr.ops.selection import keep_count, keep_topk_in_order
from vtr.reducers.base import MergedView, Reducer
from vtr.registry import register_reducer
from vtr.signals import PRE_PROJECTOR_SIGNALS, Signal
from vtr.visual import VisualTokens

#: ``reference`` values: the original code paths vtr reproduces
REFERENCES = ("llava",)


@dataclass
class AIMConfig(ReducerConfig):
    """``keep``: the total budget (mean share of visual tokens per decoder layer; see the module notes).
    ``merge``: the merge stage's ratio per view (``None``: derived from ``keep`` and the schedule).
    ``prune``: run stage 2. ``prune_start`` / ``prune_end``: l1 and l2, floats as fractions of the LLM
    depth (rounded half up), ints as layer indices (checked against the model's depth once patched).
    ``weighted`` / ``preserve_order``: see the module notes. ``temperature`` / ``iterations``:
    PageRank's τ and power iterations. ``reference``: ``None`` (vtr's path) or ``"llava"``: the
    reference's LLaVA-1.5 path (tower last-layer keys as the metric, merge before the projector,
    truncated counts; see the module notes)."""

    keep: float | int = 0.25
    merge: float | None = None
    weighted: bool = True
    preserve_order: bool = True
    prune: bool = True
    prune_start: float | int = 14 / 28
    prune_end: float | int = 22 / 28
    temperature: float = 0.1
    iterations: int = 5
    reference: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.reference is not None:
            check_choice(self.reference, "reference (None: vtr's path)", REFERENCES)
        for name in ("weighted", "preserve_order", "prune"):
            self.normalise(name, check_bool(getattr(self, name), name))
        if self.merge is not None:
            self.normalise("merge", check_keep(self.merge, "merge (or None: derived from keep)", counts=False))
            if not self.prune:
                raise ValueError(f"merge={self.merge!r} with prune=False: merging alone then meets keep; "
                                 "leave merge=None (or set keep to the merge ratio)")
        info = self.model_info
        depth = info.llm_layers if info else None
        for name in ("prune_start", "prune_end"):
            self.normalise(name, check_layer(getattr(self, name), name, depth=depth, high=depth))
        self.normalise("temperature", check_float(self.temperature, "temperature", low=0, low_open=True))
        self.normalise("iterations", check_int(self.iterations, "iterations", low=1))
        if depth is not None and self.prune:
            start, end = schedule(self, depth)
            if self.merge is not None and isinstance(self.keep, float):
                share = schedule_share(start, end, depth)
                if self.keep / self.merge < share - 1e-9:
                    raise ValueError(
                        f"merge={self.merge} leaves pruning keep/merge = {self.keep / self.merge:.3f} of the "
                        f"merged tokens, below the {share:.3f} the schedule l1={start}, l2={end} keeps on this "
                        f"{depth}-layer LLM; allowed: merge <= {self.keep / share:.3f}, or None")


def schedule(config: AIMConfig, n_layers: int) -> tuple[int, int]:
    """``(l1, l2)`` as layer indices, ``0 <= l1 < l2 <= n_layers``."""
    start, end = resolve_layer(config.prune_start, n_layers), resolve_layer(config.prune_end, n_layers)
    if not 0 <= start < end <= n_layers:
        raise ValueError(f"AIM needs 0 <= prune_start < prune_end <= {n_layers} layers, got prune_start="
                         f"{config.prune_start!r} (layer {start}) and prune_end={config.prune_end!r} (layer {end})")
    return start, end


def linear_retention(layer: int, start: int, end: int) -> float:
    """The paper's schedule: share of the LLM's visual input that layer ``layer`` still sees."""
    return min(1.0, max(0.0, 1.0 - (layer - start) / (end - start)))


def schedule_share(start: int, end: int, n_layers: int) -> float:
    """``S``: the mean over the ``n_layers`` decoder layers of :func:`linear_retention` (floor 0)."""
    return sum(linear_retention(layer, start, end) for layer in range(n_layers)) / n_layers


def prune_floor(needed: float, share: float) -> float:
    """The floor ``f`` with ``1 - (1 - f)(1 - share) = needed``, clamped to [0, 1]."""
    if share >= 1.0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - (1.0 - needed) / (1.0 - share)))


@register_reducer("aim")
class AIM(Reducer):
    """Similarity merging before the LLM, then PageRank pruning inside it; keep = the total budget per layer."""

    config_class = AIMConfig

    @property
    def vision_signals(self) -> tuple[Signal, ...]:
        """The reference mode's signals are probed while the tower runs (the last layer's keys, the
        projector's input); vtr's path needs none."""
        return tuple(sorted(PRE_PROJECTOR_SIGNALS)) if self.config.reference == "llava" else ()

    def signals_read(self) -> frozenset[Signal]:
        return frozenset(self.vision_signals)

    def count(self, ratio: float, n: int) -> int:
        """Tokens a ratio keeps of ``n``: rounded half up (:func:`keep_count`), or, in reference mode,
        truncated as the reference does (``int(n·r)``), at least 1."""
        if self.config.reference == "llava":
            return max(1, min(n, int(ratio * n)))
        return keep_count(ratio, n)

    def depth(self) -> int:
        return self.llm_depth("aim derives its merge ratio")

    def share(self, n_layers: int) -> float:
        """``S``: the mean share the pruning schedule leaves on ``n_layers`` layers (1 without pruning)."""
        if not self.config.prune:
            return 1.0
        return schedule_share(*self.schedule(n_layers), n_layers)

    def merge_ratio(self, n_layers: int, target: float) -> float:
        """The merge stage's ratio for a total budget ``target`` (a share of the view's tokens)."""
        if self.config.merge is not None:
            return self.config.merge
        return min(1.0, target / self.share(n_layers))

    def plan(self, visual: VisualTokens) -> list[torch.Tensor | MergedView]:
        n_layers = self.depth()
        rows: dict[int, int] = {}
        for view in visual.views:
            rows[view.sample] = rows.get(view.sample, 0) + view.n_patches
        reference = self.config.reference == "llava"
        if reference:
            keys = visual.signal(Signal.TOWER_LAST_KEYS)
            tower = visual.signal(Signal.PRE_PROJECTOR_FEATURES)
        plans = []
        for v, (features, view) in enumerate(zip(visual.features, visual.views)):
            # the budget is a share of the row's visual tokens (an int keep counts per row)
            if reference and isinstance(self.config.keep, float):
                target = self.config.keep  # the reference's ratio enters as given
            else:
                target = keep_count(self.config.keep, rows[view.sample]) / rows[view.sample]
            count = self.count(self.merge_ratio(n_layers, target), view.n_patches)
            if count >= view.n_patches:
                plans.append(torch.arange(view.n_patches))
                continue
            if not reference:
                patches = features[view.n_prefix:]
                merged = merge_to(patches, count, self.config.weighted, self.config.preserve_order)
                # Slots are taken in sorted order; with the reference's scrambled order the features
                # fill them in emitted order, as its contiguous renumbering did.
                plans.append(MergedView(merged.index.sort().values, merged.features))
                continue
            if keys[v].shape[0] != view.n_patches or tower[v].shape[0] != view.n_tokens:
                raise RuntimeError(f"view {v}: {keys[v].shape[0]} key rows and {tower[v].shape[0]} pre-projector rows "
                                   f"for {view.n_patches} patches ({view.n_tokens} tokens)")
            merged = merge_to(tower[v][view.n_prefix:], count, self.config.weighted, self.config.preserve_order,
                              metric=keys[v])
            plans.append(MergedView(merged.index.sort().values, merged.features, pre_projector=True))
        return plans

    def schedule(self, n_layers: int) -> tuple[int, int]:
        return schedule(self.config, n_layers)

    def floor(self, n_layers: int, n_input: int) -> float:
        """The pruning floor ``f`` for a row whose LLM input holds ``n_input`` visual tokens."""
        keep = self.config.keep
        if isinstance(keep, int):
            needed = keep / n_input  # merged rows: keep / m equals S (f = 0); unmerged rows: the share
        else:
            needed = keep / self.merge_ratio(n_layers, keep)
        return prune_floor(needed, self.share(n_layers))

    def retention(self, layer: int, n_layers: int, floor: float = 0.0) -> float:
        """Fraction of the LLM's input visual tokens that layer ``layer`` still sees."""
        return 1.0 - (1.0 - floor) * (1.0 - linear_retention(layer, *self.schedule(n_layers)))

    def llm_layers(self, n_layers: int) -> list[int]:
        if not self.config.prune or (isinstance(self.config.keep, float) and self.config.keep >= 1.0):
            return []
        start, end = self.schedule(n_layers)
        # Selection after layer l uses l's attention and applies from layer l + 1 (the engine's K).
        return [k for k in range(max(start + 1, 1), end + 1) if k < n_layers]

    def llm_select(self, context) -> list[torch.Tensor]:
        importance = context.attention.pagerank(self.config.temperature, self.config.iterations)  # (B, n)
        chosen = []
        for b in range(importance.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            n_input = int(context.n_visual_input[b])
            floor = self.floor(context.n_layers, n_input) if n_input else 0.0
            fraction = self.retention(context.layer, context.n_layers, floor)
            if self.config.reference == "llava":
                counted = int(fraction * n_input)
            else:
                counted = math.floor(fraction * n_input + 0.5)
            k = min(len(visual), counted)
            chosen.append(visual[keep_topk_in_order(importance[b, visual], k)] if k else visual[:0])
        return chosen
