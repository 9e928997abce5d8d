"""ATP-TF: a training-free adaptation of ATP-LLaVA's adaptive token pruning inside the LLM.

Paper: "ATP-LLaVA: Adaptive Token Pruning for Large Vision Language Models", Ye et al., CVPR 2025,
arXiv 2412.00447. The paper's pruning thresholds come from small learned heads trained with its
ATP loss (whose budget term makes the mean kept share meet a target); neither code nor weights are
public. **This is not the paper's method**: it keeps the paper's structure (several pruning layers, a
redundancy score fusing self-modal and cross-modal attention, an instance-adaptive count, united with
spatially uniform sampling) and replaces the learned thresholds by a rule that meets ``keep``.

**What ``keep`` counts**: the mean over decoder layers of the visual tokens each layer processes, as a
share of the row's visual tokens entering the LLM (``stats.layer_share``); an int is a count per row
(visual tokens per layer on average). ``keep=1.0`` (or a count ≥ the row's visual tokens) prunes
nothing. Layers before the first ATP layer see every token, so on a shallow LLM a small ``keep``
cannot be met: a row then keeps one visual token per pruned layer, and ``stats.notes`` says so.

At each ATP layer ``K`` (prefill, attention of layer ``K-1`` recomputed from q/k):

- ``S_self(i)``: mean attention visual token ``i`` receives from the current visual tokens
  (each key averaged over the queries that may see it, removing the causal position bias);
- ``S_cross(i)``: mean attention it receives from the text tokens after the visual tokens
  (the instruction);
- both min-max normalised within the row; ``S_red = (S_self + S_cross) / 2``.

``budget="sample"`` (default): every row meets ``keep`` by itself, and how it spends it adapts.

- Planned schedule: the row keeps ``N·ρ^j`` tokens from its ``j``-th ATP layer on, with ``ρ`` solved so
  that the mean layer share is ``keep`` (geometric decay; ``ρ = 0`` below the reachable floor).
- Adaptive count at ATP layer ``j``: the top-p set of ``S_red`` with ``p = q(2 − q)``, ``q`` the planned
  share of the current tokens (``p`` is the mass the top ``q`` of scores spread uniformly over
  [0, 1] hold, so evenly spread scores give the planned count, concentrated ones fewer), clamped to
  ``±adapt`` of the planned count (rescaled by what earlier layers spent); the **last** ATP layer
  takes whatever makes the row's mean layer share exactly ``keep`` (up to rounding and the floor).
- Kept set: a spatial set (every ``s²``-th current visual token in sequence order, ``s`` the
  layer's ``stride`` or larger so the set is at most half the count) ∪ the highest ``S_red`` until
  the count is reached. Score ties go to the lower position.

``budget="mean"``: the earlier ATP-TF rule, where counts are free: redundancy = the top-p set with
``p = mass_K ** scale``, kept = redundancy ∪ the stride set. ``keep`` is then met only on average
and only after :func:`vtr.calibrate` tuned ``scale`` on representative inputs (without calibration,
``scale = 1`` ignores ``keep``).

Layer settings: floats are fractions of the LLM depth (rounded half up, then moved into
``[1, depth - 1]``, the first setting winning on a clash); ints are layer indices and must lie in
``[1, depth - 1]`` (checked at patch time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtr.config import (ReducerConfig, check_choice, check_float, check_int, check_layer, check_sequence,
                        resolve_layer)
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer


def minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.ones_like(x)


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Indices (sorted) of the smallest set of ``scores`` ``(n,)`` whose share of the total reaches ``p``."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    total = scores.sum()
    share = scores[order].cumsum(0) / total if total > 0 else torch.linspace(1 / len(scores), 1, len(scores))
    count = int((share < p).sum()) + 1
    return order[:min(count, len(scores))].sort().values


BUDGETS = ("sample", "mean")


@dataclass
class ATPConfig(ReducerConfig):
    """``keep``: the mean share (or per-row count) of visual tokens per decoder layer (module notes).
    ``layers``: ATP layers as fractions of the LLM depth (floats) or layer indices (ints).
    ``stride``: per ATP layer, the spatial stride. ``budget``: ``"sample"`` (each row meets keep) or
    ``"mean"`` (the calibrated top-p rule). ``adapt``: how far (relative) a row's count may move from
    the planned one under ``"sample"``. ``mass`` / ``scale``: the top-p masses and their exponent of
    ``"mean"`` (``scale`` is what :func:`vtr.calibrate` tunes)."""

    keep: float | int = 0.25
    layers: tuple = (2 / 32, 8 / 32, 16 / 32, 24 / 32)
    mass: tuple = (0.9, 0.75, 0.6, 0.45)
    stride: tuple = (2, 2, 4, 4)
    scale: float = 1.0
    budget: str = "sample"
    adapt: float = 0.5

    def validate(self) -> None:
        super().validate()
        info = self.model_info
        depth = info.llm_layers if info else None
        self.normalise("layers", check_sequence(
            self.layers, "layers", lambda v, n: check_layer(v, n, depth=depth, low=1)))
        n = len(self.layers)
        self.normalise("mass", check_sequence(
            self.mass, "mass", lambda v, n: check_float(v, n, low=0, high=1, low_open=True), length=n))
        self.normalise("stride", check_sequence(self.stride, "stride", lambda v, n: check_int(v, n, low=1), length=n))
        self.normalise("scale", check_float(self.scale, "scale", low=0, low_open=True))
        check_choice(self.budget, "budget", BUDGETS)
        self.normalise("adapt", check_float(self.adapt, "adapt", low=0, high=1))
        if depth is not None and depth < 2:
            raise ValueError(f"atp prunes between decoder layers; this LLM has {depth} layer(s)")


def geometric_ratio(target: float, starts: list[int], n_layers: int) -> float:
    """``ρ`` in [0, 1] with ``(K_1 + Σ_j (K_{j+1} − K_j)·ρ^j) / L = target`` (``K_{m+1} = L``), by bisection."""
    spans = [b - a for a, b in zip(starts, starts[1:] + [n_layers])]

    def share(rho: float) -> float:
        return (starts[0] + sum(span * rho ** (j + 1) for j, span in enumerate(spans))) / n_layers

    if target <= share(0.0):
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if share(middle) < target else (low, middle)
    return (low + high) / 2


def spatial_set(n: int, stride: int, limit: int) -> torch.Tensor:
    """Every ``s²``-th of ``n`` positions, ``s >= stride`` the smallest giving at most ``limit`` of them."""
    s = stride
    while s * s < n and -(-n // (s * s)) > max(1, limit):
        s += 1
    return torch.arange(0, n, s * s)


@register_reducer("atp")
class ATP(Reducer):
    """ATP-TF (training-free adaptation of ATP-LLaVA, no learned thresholds): adaptive redundancy ∪ spatial pruning."""

    config_class = ATPConfig

    def __init__(self, config: ATPConfig) -> None:
        super().__init__(config)
        self._spent: dict[int, float] = {}  # per row: visual token-layers processed so far in this call

    def layer_settings(self, n_layers: int) -> dict[int, tuple[float, int]]:
        """``{K: (mass, stride)}``; fractions moved into ``[1, n_layers - 1]``, first setting wins on a clash."""
        settings: dict[int, tuple[float, int]] = {}
        for where, mass, stride in zip(self.config.layers, self.config.mass, self.config.stride):
            k = resolve_layer(where, n_layers)
            settings.setdefault(min(max(k, 1), n_layers - 1), (mass, stride))
        return settings

    def llm_layers(self, n_layers: int) -> list[int]:
        if isinstance(self.config.keep, float) and self.config.keep >= 1.0:
            return []  # keep=1.0: nothing to prune, the identity
        return sorted(self.layer_settings(n_layers))

    def redundancy(self, context) -> list[torch.Tensor]:
        """Per row, ``S_red`` ``(n_visual,)`` of its current visual tokens (module notes)."""
        last_visual = torch.where(context.visual, context.cols, torch.full_like(context.cols, -1)).amax(dim=1, keepdim=True)
        instruction = context.text & (context.cols > last_visual)
        self_scores, cross_scores = context.attention.column_means([context.visual, instruction])  # one attention pass
        scores = []
        for b in range(context.visual.shape[0]):
            visual = context.visual[b].nonzero().squeeze(1)
            scores.append((minmax(self_scores[b, visual]) + minmax(cross_scores[b, visual])) / 2 if visual.numel()
                          else self_scores.new_zeros(0))
        return scores

    def llm_select(self, context) -> list[torch.Tensor]:
        scores = self.redundancy(context)
        chosen = []
        for b, redundancy in enumerate(scores):
            visual = context.visual[b].nonzero().squeeze(1)
            if visual.numel() == 0:
                chosen.append(visual)
                continue
            if self.config.budget == "mean":
                mass, stride = self.layer_settings(context.n_layers)[context.layer]
                keep = top_p(redundancy, mass ** self.config.scale)
                spatial = torch.arange(0, visual.numel(), stride * stride)
                chosen.append(visual[torch.unique(torch.cat([keep, spatial]))])
            else:
                chosen.append(visual[self.budget_select(context, b, redundancy)])
        return chosen

    def target_share(self, n_input: int) -> float:
        keep = self.config.keep
        return min(1.0, keep / n_input) if isinstance(keep, int) else keep

    def budget_select(self, context, b: int, redundancy: torch.Tensor) -> torch.Tensor:
        """``budget="sample"``: sorted positions (into row ``b``'s current visual tokens) to keep."""
        n_layers, layer = context.n_layers, context.layer
        settings = self.layer_settings(n_layers)
        starts = sorted(settings)
        j = starts.index(layer)
        spans = [e - a for a, e in zip(starts, starts[1:] + [n_layers])]
        n_input, n_current = int(context.n_visual_input[b]), redundancy.numel()
        share = self.target_share(n_input)
        rho = geometric_ratio(share, starts, n_layers)
        spent = starts[0] * n_input if j == 0 else self._spent[b]
        remaining = share * n_layers * n_input - spent  # token-layers left for layers K_j .. L-1
        if j == len(starts) - 1:
            count = remaining / spans[j]
        else:
            planned = [n_input * rho ** (i + 1) for i in range(len(starts))]
            left = sum(planned[i] * spans[i] for i in range(j, len(starts)))
            target = planned[j] * remaining / left if left > 0 else 0.0
            q = min(1.0, target / n_current)
            proposal = n_current if q >= 1.0 else top_p(redundancy, q * (2 - q)).numel()
            delta = self.config.adapt
            count = min(max(proposal, target * (1 - delta)), target * (1 + delta))
        count = min(n_current, max(1, math.floor(count + 0.5)))
        self._spent[b] = spent + count * spans[j]
        _, stride = settings[layer]
        spatial = spatial_set(n_current, stride, count // 2)
        rest = torch.ones(n_current, dtype=torch.bool)
        rest[spatial] = False
        order = torch.sort(redundancy, descending=True, stable=True).indices  # ties: lower position first
        extra = order[rest[order]][:count - spatial.numel()]
        return torch.cat([spatial, extra]).sort().values
