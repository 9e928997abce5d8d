"""QuoTA: a video's visual-token budget shared among its frames by their relevance to the question.

Paper: "QuoTA: Query-oriented Token Assignment via CoT Query Decouple for Long Video Comprehension",
Luo et al., arXiv 2503.08689, AAAI 2026 (code: MAC-AutoML/QuoTA).

Algorithm (per video, before the LLM):

1. *Query decoupling* (on by default with ``scorer="self"``): one text-only greedy generation of the
   model turns the question into the physical objects to look for (:mod:`vtr.reducers.quota.cot`); an
   unreadable answer falls back to the question.
2. *Frame scoring*: each frame gets ``p ≥ 0``. Default (``scorer="self"``): the patched model is asked
   of each frame "Does the image contain any object of {objects}? A. yes, B. no" (or whether the frame
   holds enough information to answer the question) and ``p = P("A")`` from one forward pass per
   batch of frames. ``scorer="clip"``: CLIP similarity; or any callable (:mod:`vtr.reducers.quota.scorers`).
3. *Weights* ``w = (weight_scale · p) ** weight_exponent``, normalised (defaults 100 and 2).
4. *Assignment*: the budget (``keep`` applied to each frame's patches, summed over the video: the
   same total as a uniform per-frame reducer at that ``keep``) is split in proportion to ``w``
   (:mod:`vtr.reducers.quota.budget`), and each frame is reduced to its share by bilinear resampling of its
   token grid (``frame_reduction="bilinear"``, the reference's default) or by a top-k of its
   [CLS] attention (``"cls_attention"``). Frames stay in time order.

The question is read from the prompt (the text after the video placeholders), so
``vtr.patch(model, "quota", keep=0.25)`` needs no change to the ``generate`` call;
``question="..."`` (or one per row) overrides it; pass it for ``forward`` calls whose prompt also holds
the answer (training with ``labels``), where the text after the video is more than the question.
The question, the scoring and decoupling prompts need the model's tokenizer: ``processor=`` (the
model's processor or tokenizer), else ``AutoProcessor.from_pretrained(model.name_or_path,
local_files_only=True)``. What happened to each video: :func:`vtr.reducers.quota.assignments`;
decoupling/scoring wall time: ``stats.seconds["quota_decouple"]`` and ``["quota_score"]`` (both
also inside ``stats.seconds["select"]``).

Units and what the budget counts:

- Video-LLaVA: a frame (16×16 patches). Each frame's [CLS] feature is the view's prefix and stays,
  outside the budget (like the reference's newline tokens, which come on top of its ``N_t``), so
  ``keep=1.0`` is the identity and the LLM sees ``budget + T`` video tokens.
- Qwen2-VL: a frame group (2 frames fused by the temporal patch), on the merged grid; no prefix.

Deviations from the reference code:

- Scorer: the reference scores with a separate Qwen2-VL-2B; here the model being patched scores
  (or CLIP, or your callable). It sees each frame as it sees it in the answer pass (the projected
  features, as a one-frame video) in the caller's own prompt template, so no vision work is
  repeated; P("A") sums the single-token spellings "A" and " A" (the reference reads one id).
- Budget: per-frame cap (no frame exceeds its own token count; the reference can up-sample a
  dominant frame), a minimum per frame (``min_per_frame``, default 1; the reference drops frames
  whose floored share is 0, vtr keeps every view non-empty), surplus redistributed by weight, and
  integer rounding by largest remainder so the total is the budget exactly (the reference floors).
- Bilinear resampling uses the reference's shape on square grids (``k = ⌊√n⌋``: ``(k+1) × k`` rows ×
  columns when ``(k+1)·k ≤ n``, else ``k × k``) and samples exactly its ``F.interpolate`` points when
  the share is that rectangle (tested against an independent implementation of the reference's rule);
  a share the rectangle does not fill gets rows one token longer instead of losing the remainder, as
  the reference does. The new tokens take the slots (and, by default, the position ids) of the
  original patches under their sampling points.
- Score ties: with ``frame_reduction="cls_attention"`` ties go to the lower patch index.
- Batches of any size and several videos per prompt (each video has its own budget); the
  reference assumes one video. Images are rejected (QuoTA needs video).
- The CoT prompt is vtr's own (same three steps); parsing uses ``ast.literal_eval``, never ``eval``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vtr.reducers.quota.budget import allocate, frame_weights, resample_grid
from vtr.reducers.quota.context import QueryContext
from vtr.reducers.quota.records import RECORD, Assignment
from vtr.reducers.quota.scorers import ClipScorer
from vtr.reducers.base import MergedView, Reducer
from vtr.config import ReducerConfig, check_bool, check_choice, check_float, check_int
from vtr.registry import register_reducer
from vtr.ops.selection import keep_topk_in_order
from vtr.signals import Signal
from vtr.visual import View, VisualTokens

SCORERS = ("self", "clip")
#: said in the stats when a video's frames all score 0 (e.g. a random-weight CLIP, whose clamped cosines are 0)
ZERO_SCORES_NOTE = "quota: every frame of a video scored 0, so its budget was split uniformly across its frames"
FRAME_REDUCTIONS = ("bilinear", "cls_attention")


@dataclass
class QuotaConfig(ReducerConfig):
    """QuoTA's settings (see the module docstring).

    ``keep``: per-frame ratio or count whose sum over a video is the video's budget. ``scorer``:
    ``"self"``, ``"clip"`` or a callable ``(frames, query) -> scores``. ``question``: overrides the
    question read from the prompt (a string, or one per batch row). ``decouple``: CoT query
    decoupling (``None``: on with ``scorer="self"`` only). ``frame_reduction``: ``"bilinear"`` or
    ``"cls_attention"``. ``weight_scale`` / ``weight_exponent``: ``w = (scale·p)^exponent``.
    ``min_per_frame``: patch tokens every frame keeps at least. ``score_batch``: frames per scoring
    forward pass. ``decouple_tokens``: most tokens the decoupling pass generates. ``processor``: the
    model's processor or tokenizer (default: ``AutoProcessor.from_pretrained(model.name_or_path,
    local_files_only=True)``). ``clip_model`` / ``clip_preprocess`` / ``clip_tokenizer``: an
    ``open_clip`` model, its preprocess transform and tokenizer, for ``scorer="clip"``."""

    keep: float | int = 0.25
    scorer: Any = "self"
    question: str | list[str] | None = None
    decouple: bool | None = None
    frame_reduction: str = "bilinear"
    weight_scale: float = 100.0
    weight_exponent: float = 2.0
    min_per_frame: int = 1
    score_batch: int = 64
    decouple_tokens: int = 96
    processor: Any = field(default=None, repr=False)
    clip_model: Any = field(default=None, repr=False)
    clip_preprocess: Any = field(default=None, repr=False)
    clip_tokenizer: Any = field(default=None, repr=False)

    def validate(self) -> None:
        super().validate()
        if not (callable(self.scorer) or (isinstance(self.scorer, str) and self.scorer in SCORERS)):
            raise ValueError(f"scorer must be one of {SCORERS} or a callable (frames, query) -> scores, got {self.scorer!r}")
        if self.scorer == "clip":
            ClipScorer(self.clip_model, self.clip_preprocess, self.clip_tokenizer)  # raises TypeError naming the setting
        question = self.question
        texts = [question] if isinstance(question, str) else question if isinstance(question, (list, tuple)) else None
        if question is not None and not (texts and all(isinstance(q, str) and q.strip() for q in texts)):
            raise ValueError(f"question must be None (read from the prompt), a non-empty string or a list of them "
                             f"(one per batch row), got {question!r}")
        if self.decouple is not None:
            self.normalise("decouple", check_bool(self.decouple, "decouple (or None: on with scorer='self')"))
        check_choice(self.frame_reduction, "frame_reduction", FRAME_REDUCTIONS)
        for name in ("weight_scale", "weight_exponent"):
            self.normalise(name, check_float(getattr(self, name), name, low=0, low_open=True))
        for name in ("min_per_frame", "score_batch", "decouple_tokens"):
            self.normalise(name, check_int(getattr(self, name), name, low=1))
        if self.processor is not None:
            tokenizer = getattr(self.processor, "tokenizer", None) or self.processor
            if not (callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))):
                raise TypeError(f"processor must be the model's processor or tokenizer (with encode/decode), "
                                f"got {type(self.processor).__name__}")


def video_views(views: list[View]) -> list[list[int]]:
    """View indices per video, each list in frame order (views of one item; by row when items are unknown)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, view in enumerate(views):
        key = (view.item, -1) if view.item >= 0 else (-1, view.sample)
        groups.setdefault(key, []).append(index)
    return [sorted(g, key=lambda i: (views[i].frame, i)) for g in groups.values()]


@register_reducer("quota")
class QuoTA(Reducer):
    """QuoTA: frames scored against the question (by the model itself) share the video's token budget by weight."""

    families = ("video_llava", "qwen2_vl", "qwen2_5_vl")
    family_hint = "QuoTA assigns a video's budget across frames; use 'fastervlm' for image-only models"
    config_class = QuotaConfig

    def signals_read(self) -> frozenset[Signal]:
        return frozenset({Signal.CLS_ATTENTION}) if self.config.frame_reduction == "cls_attention" else frozenset()

    def plan(self, visual: VisualTokens) -> list[torch.Tensor | MergedView]:
        if visual.modality != "video":
            raise ValueError(
                f"QuoTA shares a video's token budget among its frames and needs video input (pixel_values_videos); "
                f"this call has {visual.modality or 'image'} input. Use a per-image reducer (e.g. 'fastervlm') for "
                "images, and pass images and videos in separate calls"
            )
        context = QueryContext(self.config, visual)
        plans: list[Any] = [None] * len(visual.views)
        assignments = []
        for views in video_views(visual.views):
            caps = [visual.views[v].n_patches for v in views]
            budget = sum(self.budget(visual.views[v]) for v in views)
            question, objects, scores, weights, counts = "", [], None, None, caps
            if budget < sum(caps):  # otherwise every frame keeps everything: nothing to score
                question, objects, scores = context.score(views)
                weights = frame_weights(scores, self.config.weight_scale, self.config.weight_exponent)
                if not bool((scores > 0).any()) and ZERO_SCORES_NOTE not in visual.notes:
                    visual.notes.append(ZERO_SCORES_NOTE)
                counts = allocate(budget, weights, caps, self.config.min_per_frame)
            for v, n in zip(views, counts):
                plans[v] = self.reduce_view(visual, v, n)
            first = visual.views[views[0]]
            assignments.append(Assignment(first.sample, first.item, question, objects, scores, weights,
                                          min(budget, sum(caps)), list(counts)))
        context.report_seconds()
        visual.records[RECORD] = assignments
        return plans

    def reduce_view(self, visual: VisualTokens, v: int, n: int) -> torch.Tensor | MergedView:
        """View ``v`` down to ``n`` patch tokens (all of them when ``n`` covers the view)."""
        view, features = visual.views[v], visual.features[v]
        if n >= view.n_patches:
            return torch.arange(view.n_patches, device=features.device)
        if self.config.frame_reduction == "cls_attention":
            return keep_topk_in_order(visual.signal(Signal.CLS_ATTENTION)[v], n)
        slots, resampled = resample_grid(features[view.n_prefix:], view.grid, n)
        return MergedView(slots, resampled)
