"""What the last patched call did: tokens in and out per sample, per stage, per layer, and FLOPs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ViewRecord:
    """One view's outcome: its batch row, patch grid, and the kept patch indices ``(k,)``."""

    sample: int
    grid: tuple[int, int]
    kept: torch.Tensor


@dataclass
class ReductionStats:
    """Statistics of the last patched ``forward``/``generate`` call.

    Attributes:
        reducer: reducer name; ``description`` its one-line description (says "adapted" where the
            signal is a documented substitute).
        visual_tokens_in / visual_tokens_out: per sample, visual tokens before and after all stages.
        stages: per stage name (``"pre_llm"``), ``{"in": [...], "out": [...]}`` per sample.
        visual_tokens_per_layer: per sample, the visual tokens each decoder layer processed.
        prefill_flops_before / prefill_flops_after: analytic LLM prefill FLOPs summed over samples
            (see :mod:`vtr.ops.flops`), for the unreduced and the reduced prompt.
        views: per view, the kept patch indices (for overlays and debugging).
        kept_columns: per row, the columns of the caller's prompt that the LLM saw, in order; row
            ``b`` of a patched ``forward``'s logits belongs to ``input_ids[b, kept_columns[b]]``
            (after any re-padding on the left).
        llm_columns: for each in-LLM prune layer ``K``, per row, the columns of the LLM input that
            layers ``>= K`` process (-1 for filler entries of ragged batches).
        key_bias: ``(B, L')`` per column of the LLM input, the ``log`` of how many patches a merged visual
            token stands for, added to its attention logits in every decoder layer (proportional attention,
            :mod:`vtr.engine.proportional`); 0 for every other column; ``None`` when nothing asks for it.
        seconds: wall time of the vision encoding and of the reducer's selection (and what a reducer
            adds, e.g. QuoTA's ``quota_decouple`` / ``quota_score``).
        records: what a reducer recorded about the call, by name (QuoTA: ``"quota"``, one
            :class:`~vtr.reducers.quota.Assignment` per video).
        notes: deviations that applied to this call, e.g. an "adapted" substitute signal on a
            vision tower without [CLS]; ``adapted`` is True when there are any.
    """

    reducer: str
    description: str = ""
    visual_tokens_in: list[int] = field(default_factory=list)
    visual_tokens_out: list[int] = field(default_factory=list)
    stages: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    visual_tokens_per_layer: list[list[int]] = field(default_factory=list)
    prefill_flops_before: float = 0.0
    prefill_flops_after: float = 0.0
    views: list[ViewRecord] = field(default_factory=list)
    kept_columns: list[torch.Tensor] = field(default_factory=list)
    llm_columns: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    key_bias: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def adapted(self) -> bool:
        """True when a signal was a documented substitute (e.g. no [CLS] token); see ``notes``."""
        return bool(self.notes)

    @property
    def flops_ratio(self) -> float:
        """Reduced / unreduced analytic prefill FLOPs (1.0 when nothing was reduced)."""
        return self.prefill_flops_after / self.prefill_flops_before if self.prefill_flops_before else 1.0

    @property
    def keep_ratio(self) -> float:
        total = sum(self.visual_tokens_in)
        return sum(self.visual_tokens_out) / total if total else 1.0

    @property
    def layer_share(self) -> list[float]:
        """Per sample: mean over decoder layers of visual tokens processed / visual tokens in."""
        return [sum(layers) / (len(layers) * n) if n and layers else 1.0
                for layers, n in zip(self.visual_tokens_per_layer, self.visual_tokens_in)]

    def summary(self) -> str:
        label = f"{self.reducer} (adapted)" if self.adapted else self.reducer
        return (
            f"{label}: visual tokens {sum(self.visual_tokens_in)} -> {sum(self.visual_tokens_out)} "
            f"({self.keep_ratio:.1%} kept), prefill FLOPs x{self.flops_ratio:.3f}"
        )
