"""GlobalCom²: compress LLaVA-NeXT's AnyRes crops under the guidance of the thumbnail.

Paper: "Global Compression Commander" (first titled "Compression with Global Guidance"), arXiv 2501.05179
(code: xuyang-liu16/GlobalCom2, ``llava/model/llava_arch.py``: ``generate_scale_for_crop_features``,
``interpolate_and_split_cls_attn_scores``, ``compress_thumbnail``, ``compress_crops``).

Signal: the [CLS]→patch attention *logits* (pre-softmax, mean over heads) of the **last** vision
layer (not the feature layer), for the thumbnail (base view) and for each crop. With the overall
retention ratio ``r = keep`` (reference default 0.25), per image:

1. Thumbnail: keep ``⌊P·r⌋`` patches by its own score.
2. Per-crop ratio: each thumbnail cell ``(i, j)`` of its ``s×s`` grid belongs to crop cell
   ``(min(i // (s // n_h), n_h−1), min(j // (s // n_w), n_w−1))`` of the ``n_h×n_w`` AnyRes grid;
   ``g_k`` = sum of the thumbnail scores of crop ``k``; ``σ = softmax((g − max g)/T)`` with ``T = 10``;
   ``r_k = min(1, r·(1 + σ_k − mean σ))`` (:func:`crop_retention`).
3. Per crop, over its patches that survive unpadding: score = ``L2norm(local) + L2norm(global)``,
   ``local`` = the crop's own [CLS] scores, ``global`` = the thumbnail's score map bilinearly resized
   (``align_corners=False``) to the image's unpadded crop grid and cut to the crop's rectangle; keep
   the top ``⌊N_k·r_k⌋`` in raster order. ``image_newline`` rows are always kept (by the adapter).

Deviations from the reference code:
- Thumbnail tokens are kept in spatial (raster) order, like every other view; the reference emits
  them in descending score order. ``thumbnail_order="score"`` reproduces that (the thumbnail's kept
  features are placed in score order into its kept slots; pair it with ``positions="renumber"``, as
  the reference, since with original positions each slot keeps its own patch's position id).
- Counts are at least 1 per view (the engine keeps no empty view); ``keep=1.0`` keeps everything (the
  formula would keep fewer than all tokens of below-average crops, so ``r = 1`` is made the identity).
- Rounding: every count is the reference's ``int(n·r)`` (truncation), at least 1. An int ``keep``
  (not in the reference) is turned into the image's ratio first (see the config).
- Score ties go to the lower patch index (a stable sort); the reference's ``topk`` leaves tie order
  unspecified.
- Scores come from the last layer's q/k projections, recorded while the tower runs (the reducer
  declares ``vision_signals``), not from a monkey-patched eager CLIP attention; same values (tested).
- Batches of any size (the reference asserts batch size 1).
- Positions: original position ids by default; ``positions="renumber"`` renumbers, as the reference.
- LLaVA-NeXT only: any other family is refused at patch time with a ``ValueError`` that points to
  ``fastervlm``.

Run side by side on the same weights, the reference and vtr keep identical sets in every view; the
remaining logit differences come from three behaviours of the reference that vtr does not copy:

1. The reference writes the kept crop tokens' indices into the *padded* crop grid (before
   ``unpad_image``), so kept features land in slots shifted by the padding; vtr indexes the
   unpadded grid the stock ``spatial_unpad`` layout actually feeds the LLM, so each kept feature
   stays at its own patch's slot (copying the shift would move tokens away from their patches).
2. The reference appends an ``image_newline`` token after every row of the padded grid, including
   rows that are all padding; vtr keeps exactly the newline tokens of the stock transformers layout
   (one per unpadded row), so ``keep=1.0`` is the unpatched model.
3. The reference casts the crop features to fp16 on the way out; vtr keeps the model's dtype, so a
   fp32 or bf16 model is not silently rounded through fp16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vtr.reducers.base import MergedView, Reducer
from vtr.config import ReducerConfig, check_choice, check_float
from vtr.registry import register_reducer
from vtr.ops.selection import keep_topk_in_order
from vtr.signals import Signal
from vtr.visual import VisualTokens

ORDERS = ("spatial", "score")


@dataclass
class GlobalCom2Config(ReducerConfig):
    """``keep``: overall retention ratio ``r`` (a float), or an int count ``k`` per view (an image then gets
    ``r = min(1, k·views / patches)``, the same total as ``k`` tokens in each view). ``temperature``: ``T`` of the crop softmax.
    ``thumbnail_order``: ``"spatial"`` (default) or ``"score"`` (the reference's emission order)."""

    keep: float | int = 0.25
    temperature: float = 10.0
    thumbnail_order: str = "spatial"

    def validate(self) -> None:
        super().validate()
        self.normalise("temperature", check_float(self.temperature, "temperature", low=0, low_open=True))
        check_choice(self.thumbnail_order, "thumbnail_order", ORDERS)


def crop_retention(thumbnail: torch.Tensor, grid: tuple[int, int], ratio: float, temperature: float) -> torch.Tensor:
    """Per-crop retention ratios from the thumbnail's scores.

    Args:
        thumbnail: ``(s, s)`` thumbnail scores.
        grid: ``(n_h, n_w)`` crops of the AnyRes grid.
    Returns:
        ``(n_h, n_w)`` float32 ratios ``min(1, ratio·(1 + σ_k − mean σ))``.
    """
    n_h, n_w = grid
    s_h, s_w = thumbnail.shape
    rows = (torch.arange(s_h, device=thumbnail.device) // max(1, s_h // n_h)).clamp(max=n_h - 1)
    cols = (torch.arange(s_w, device=thumbnail.device) // max(1, s_w // n_w)).clamp(max=n_w - 1)
    crop = (rows[:, None] * n_w + cols[None, :]).flatten()
    sums = torch.zeros(n_h * n_w, dtype=torch.float32, device=thumbnail.device)
    sums.index_add_(0, crop, thumbnail.float().flatten())
    sigma = ((sums - sums.max()) / temperature).softmax(dim=0)
    return (ratio * (1 + sigma - sigma.mean())).clamp(max=1.0).view(n_h, n_w)


def count(n: int, ratio: float) -> int:
    """The reference's ``int(n · ratio)``, at least 1."""
    return max(1, min(n, math.floor(n * ratio)))


@register_reducer("globalcom2")
class GlobalCom2(Reducer):
    """LLaVA-NeXT AnyRes: thumbnail [CLS] logits set per-crop ratios; crops ranked by local + global scores."""

    config_class = GlobalCom2Config
    families = ("llava_next",)
    family_hint = "globalcom2 needs AnyRes views (a thumbnail and crops); use 'fastervlm' for other models"
    vision_signals = (Signal.CLS_LOGITS_LAYERS,)  # the last layer's [CLS] row is recorded only for reducers that ask
    reads = (Signal.ANYRES_LAYOUT,)

    def plan(self, visual: VisualTokens) -> list[torch.Tensor | MergedView]:
        if Signal.ANYRES_LAYOUT.value not in visual.signals.available:
            raise ValueError(
                f"globalcom2 compresses LLaVA-NeXT's AnyRes input (a thumbnail plus high-resolution crops); "
                f"{visual.signals.family!r} models have no AnyRes views. Use 'fastervlm' instead (top [CLS] "
                "attention per view)"
            )
        layout = [t.tolist() for t in visual.signal(Signal.ANYRES_LAYOUT)]
        scores = None
        plans: list = [None] * len(visual.views)
        for image in sorted({entry[0] for entry in layout}):
            views = [v for v, entry in enumerate(layout) if entry[0] == image]
            ratio = self.image_ratio([visual.views[v] for v in views])
            if ratio >= 1.0:  # the identity: the formula would keep fewer than all of below-average crops
                for v in views:
                    plans[v] = torch.arange(visual.views[v].n_patches)
                continue
            if scores is None:
                scores = [rows[-1] for rows in visual.signal(Signal.CLS_LOGITS_LAYERS)]  # the last layer, (n_patches,)
            base = next(v for v in views if layout[v][1] < 0)
            plans[base] = self.thumbnail_plan(visual, base, scores[base], ratio)
            crops = [v for v in views if v != base]
            if crops:
                for v, kept in zip(crops, self.crop_plans(visual, layout, base, crops, scores, ratio)):
                    plans[v] = kept
        return plans

    def image_ratio(self, views) -> float:
        """``r`` for one image: ``keep`` itself, or for an int count ``k`` the ratio that gives the image
        ``k`` tokens per view in total (``min(1, k·views / patches)``)."""
        keep = self.config.keep
        if isinstance(keep, float):
            return keep
        return min(1.0, keep * len(views) / sum(v.n_patches for v in views))

    def thumbnail_plan(self, visual: VisualTokens, base: int, scores: torch.Tensor, ratio: float):
        kept = keep_topk_in_order(scores, count(len(scores), ratio))
        if self.config.thumbnail_order == "spatial":
            return kept
        order = kept[torch.sort(scores[kept], descending=True, stable=True).indices]
        features = visual.features[base][visual.views[base].n_prefix:]
        return MergedView(kept, features[order.to(features.device)])

    def crop_plans(self, visual: VisualTokens, layout, base: int, crops: list[int], scores,
                   ratio: float) -> list[torch.Tensor]:
        """Kept patches of each crop view of one image (``layout``: the ``"anyres_layout"`` rows)."""
        side_h, side_w = visual.views[base].grid
        thumbnail = scores[base].float().view(side_h, side_w)
        _, _, _, grid_rows, grid_cols, _, _, rows, cols = layout[base]
        ratios = crop_retention(thumbnail, (grid_rows, grid_cols), ratio, self.config.temperature)
        guide = F.interpolate(thumbnail[None, None], size=(rows, cols), mode="bilinear", align_corners=False)[0, 0]
        plans = []
        for v in crops:
            _, crop_row, crop_col, _, _, row0, col0, _, _ = layout[v]
            h, w = visual.views[v].grid
            local = F.normalize(scores[v].float(), dim=0)
            global_ = F.normalize(guide[row0:row0 + h, col0:col0 + w].flatten(), dim=0)
            plans.append(keep_topk_in_order(local + global_, count(h * w, float(ratios[crop_row, crop_col]))))
        return plans
