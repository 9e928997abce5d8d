"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): a SigLIP tower (no [CLS]), AnyRes-max images,
2×2-pooled video frames, a Qwen2 LLM.

How transformers 5.24 builds the visual tokens (``models/llava_onevision/modeling_llava_onevision.py``):

- Images (``get_image_features``): SigLIP runs on every view of every image (the base view and the AnyRes
  crops; one view only for images of a multi-image row, ``batch_num_images``); the feature layer's patches
  (``"full"``: SigLIP has no [CLS]) are projected; ``pack_image_features`` lays out per image the base view's
  ``side²`` patches, then the crops stitched into one grid, unpadded, and **bilinearly shrunk** when it
  holds over ``1.1² · max`` tiles' worth of patches (``vision_aspect_ratio="anyres_max_<max>"``), with an
  ``image_newline`` after every row (a one-view image: its patches, then one newline).
- Videos (``get_video_features``): per frame, the projected ``side×side`` grid is bilinearly pooled to
  ``⌈side/2⌉×⌈side/2⌉`` (``apply_pooling``); a video is its frames' pooled tokens, then one newline.

What vtr sees:

- Views: per image, the base view ``(side, side)`` and, when it has crops, **one view for the whole stitched
  grid** ``(rows, cols)`` as the LLM receives it (after unpadding and shrinking: a shrunk token mixes several
  crops, so crops are not views of their own); per video frame, its pooled grid. ``keep`` applies per view.
  ``image_newline`` tokens are always kept.
- Segments: one per image (its packed run) and one per video (``F · p + 1`` placeholders).
- Signals, **adapted** (SigLIP has no [CLS]): ``cls_attention`` is the attention each patch *receives* at the
  feature layer (``received_attention``: column mean of the head-mean post-softmax patch attention, recomputed
  from the layer's q/k); FoPru's ``patch_attention_*_means`` are that layer's column and row means. Each
  signal is laid out the way the features are: pushed through the model's own ``pack_image_features``
  (unpad, bilinear shrink) for the stitched grid, through the model's own ``apply_pooling`` (2×2 bilinear)
  for video frames. The notes in ``stats.notes`` say so.

Kept tokens keep their original position ids by default (``positions="original"``), as for LLaVA-NeXT.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch

from vtr.adapters.base import Adapter, Encoded
from vtr.adapters.clip_tower import first_given
from vtr.adapters.layout import item_rows
from vtr.adapters.siglip_tower import SIGLIP_SIGNALS, probe_feature_layer, siglip_tokens
from vtr.engine.splice import Segment
from vtr.visual import View

#: how the signals are laid out, for the notes
LAYOUT_NOTE = "stitched crops unpadded and shrunk with the model's packer, video frames pooled 2x2 with its pooling"


@dataclass
class PackedMedia(Encoded):
    """:class:`Encoded` plus, per segment, the model's packed ``(L, D)`` features, each view's packed rows and
    the always-kept rows (``image_newline``)."""

    packed: list[torch.Tensor] = field(default_factory=list)
    view_rows: list[torch.Tensor] = field(default_factory=list)   # per view, (n_patches,) rows in its segment
    segment_views: list[list[int]] = field(default_factory=list)  # per segment, its views
    fixed_rows: list[torch.Tensor] = field(default_factory=list)  # per segment, rows always kept
    view_features: list[torch.Tensor] = field(default_factory=list)  # per view, as encoded (before any merge)


class LlavaOnevisionAdapter(Adapter):
    family = "llava_onevision"
    model_classes = ("LlavaOnevisionForConditionalGeneration",)
    provides = SIGLIP_SIGNALS
    visual_inputs = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos", "image_sizes_videos")
    rejected_inputs = {
        "image_grid_thw": "that is a Qwen2-VL input; pass LLaVA-OneVision's processor output",
        "video_grid_thw": "that is a Qwen2-VL input; pass LLaVA-OneVision's processor output",
    }

    def check_inputs(self, kwargs: dict) -> None:
        super().check_inputs(kwargs)
        if kwargs.get("pixel_values") is not None and kwargs.get("image_sizes") is None:
            raise ValueError("LLaVA-OneVision needs image_sizes (the (height, width) of each image) alongside "
                             "pixel_values; pass the processor's image_sizes")
        strategy = first_given(kwargs.get("vision_feature_select_strategy"),
                               self.model.config.vision_feature_select_strategy)
        if strategy != "full" and any(kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos")):
            raise ValueError(f"vision_feature_select_strategy={strategy!r} is not supported for LLaVA-OneVision; "
                             "allowed: 'full' (SigLIP has no [CLS]: 'default' drops a real patch)")

    # -- encode ---------------------------------------------------------------------------------
    def encode(self, kwargs: dict) -> list[Encoded]:
        encoded = []
        if kwargs.get("pixel_values") is not None:
            encoded.append(self.encode_images(kwargs))
        if kwargs.get("pixel_values_videos") is not None:
            encoded.append(self.encode_videos(kwargs))
        return encoded

    def run_tower(self, encode_fn, kwargs: dict, **encode_kwargs):
        """The model's own feature function with a q/k probe on the feature layer; ``(outputs, probe)``."""
        layer = first_given(kwargs.get("vision_feature_layer"), self.model.config.vision_feature_layer)
        with probe_feature_layer(self.model.model.vision_tower, layer) as probe:
            outputs = encode_fn(return_dict=True, vision_feature_layer=layer, vision_feature_select_strategy="full",
                                **encode_kwargs)
        return outputs, probe[0]

    def views_per_image(self, kwargs: dict) -> list[int]:
        """Tower inputs per image, as ``get_image_features`` counts them (one for images of multi-image rows)."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        config, sizes = self.model.config, kwargs["image_sizes"]
        per_row = kwargs.get("batch_num_images")
        patched = [True] * len(sizes) if per_row is None else [n == 1 for n in per_row.tolist() for _ in range(n)]
        return [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
                if p else 1 for size, p in zip(sizes, patched)]

    def pack(self, per_image: list[torch.Tensor], kwargs: dict, newline: float) -> list[torch.Tensor]:
        """Per-tower-input maps ``(n_i, P, C)`` through the model's own packer (``newline`` fills its rows)."""
        config = self.model.config
        aspect = first_given(kwargs.get("vision_aspect_ratio"), config.vision_aspect_ratio)
        fill = torch.full((per_image[0].shape[-1],), newline, dtype=per_image[0].dtype, device=per_image[0].device)
        packed, _ = self.model.model.pack_image_features(per_image, kwargs["image_sizes"], image_newline=fill,
                                                         vision_aspect_ratio=aspect)
        return packed

    def encode_images(self, kwargs: dict) -> PackedMedia:
        config = self.model.config
        token_id = config.image_token_id
        extra = {k: kwargs[k] for k in ("vision_aspect_ratio", "batch_num_images") if kwargs.get(k) is not None}
        outputs, probe = self.run_tower(self.model.model.get_image_features, kwargs,
                                                  pixel_values=kwargs["pixel_values"], image_sizes=kwargs["image_sizes"],
                                                  **extra)
        packed = list(outputs.pooler_output)
        n_views = self.views_per_image(kwargs)
        side = config.vision_config.image_size // config.vision_config.patch_size
        # which packed rows are grid patches (1) and which newlines (0): ones pushed through the packer
        ones = [torch.ones(n, side * side, 1) for n in n_views]
        marks = [m[:, 0] > 0.5 for m in self.pack(ones, kwargs, newline=0.0)]
        samples = item_rows(kwargs["input_ids"], token_id, [len(p) for p in packed], "image",
                            "pixel_values/image_sizes")
        views, view_rows, segment_views, fixed = [], [], [], []
        for image, (mark, sample) in enumerate(zip(marks, samples)):
            rows = torch.arange(len(mark))
            grid_rows = rows[side * side:][mark[side * side:]]
            mine = [len(views)]
            views.append(View(sample=sample, grid=(side, side), n_prefix=0, token_id=token_id))
            view_rows.append(rows[:side * side])
            if n_views[image] > 1:
                newlines = (~mark[side * side:]).sum().item()
                mine.append(len(views))
                views.append(View(sample=sample, grid=(newlines, len(grid_rows) // newlines), n_prefix=0,
                                  token_id=token_id))
                view_rows.append(grid_rows)
            segment_views.append(mine)
            fixed.append(rows[~mark])
        features = [packed[i].index_select(0, view_rows[v].to(packed[i].device))
                    for i, vs in enumerate(segment_views) for v in vs]

        def per_view(scores: torch.Tensor) -> list[torch.Tensor]:  # (n_inputs, C, P) -> per view (C, n_patches)
            maps = list(scores.transpose(1, 2).split(n_views))  # per image (n_i, P, C)
            laid = self.pack(maps, kwargs, newline=float("nan"))
            return [laid[i][view_rows[v].to(laid[i].device)].T for i, vs in enumerate(segment_views) for v in vs]

        segments = [Segment(s, len(p), token_id) for s, p in zip(samples, packed)]
        tokens = siglip_tokens(self.family, LAYOUT_NOTE, features, views, probe, per_view)
        tokens.view_pixels = functools.cache(lambda: self.image_view_pixels(kwargs, n_views))
        return PackedMedia("image", tokens, outputs, segments,
                           packed=packed, view_rows=view_rows, segment_views=segment_views, fixed_rows=fixed,
                           view_features=list(features))

    def encode_videos(self, kwargs: dict) -> PackedMedia:
        config, base = self.model.config, self.model.model
        token_id = config.video_token_id
        videos = kwargs["pixel_values_videos"]
        n_videos, n_frames = videos.shape[:2]
        outputs, probe = self.run_tower(base.get_video_features, kwargs, pixel_values_videos=videos)
        packed = list(outputs.pooler_output)  # per video (F·p + 1, D), the newline last
        side = config.vision_config.image_size // config.vision_config.patch_size
        pooled = (-(-side // 2), -(-side // 2))  # apply_pooling's ceil(side / 2)
        p = pooled[0] * pooled[1]
        samples = item_rows(kwargs["input_ids"], token_id, [len(x) for x in packed], "video", "pixel_values_videos")
        views = [View(sample=s, grid=pooled, n_prefix=0, token_id=token_id) for s in samples for _ in range(n_frames)]
        view_rows = [torch.arange(f * p, (f + 1) * p) for _ in range(n_videos) for f in range(n_frames)]
        segment_views = [list(range(v * n_frames, (v + 1) * n_frames)) for v in range(n_videos)]
        fixed = [torch.tensor([n_frames * p]) for _ in range(n_videos)]
        features = [packed[v][f * p:(f + 1) * p] for v in range(n_videos) for f in range(n_frames)]

        def per_view(scores: torch.Tensor) -> list[torch.Tensor]:  # (n_frames_total, C, P) -> per frame (C, p)
            return list(base.apply_pooling(scores.transpose(1, 2).contiguous()).transpose(1, 2))

        segments = [Segment(s, len(x), token_id) for s, x in zip(samples, packed)]
        tokens = siglip_tokens(self.family, LAYOUT_NOTE, features, views, probe, per_view)
        tokens.view_pixels = lambda: list(videos.flatten(0, 1))  # per frame (3, H, W)
        return PackedMedia("video", tokens, outputs, segments,
                           packed=packed, view_rows=view_rows, segment_views=segment_views, fixed_rows=fixed,
                           view_features=list(features))

    def image_view_pixels(self, kwargs: dict, n_views: list[int]) -> list[torch.Tensor]:
        """Per view ``(3, H, W)`` normalised pixels: the base view's tile, and for the stitched view the crops
        stitched in raster order with the letterbox cut as the model's ``unpad_image`` cuts the features (for
        overlays; a shrunk grid is drawn over the same picture)."""
        from transformers.models.llava_onevision.modeling_llava_onevision import (get_anyres_image_grid_shape,
                                                                                  unpad_image)

        config, pixels = self.model.config, kwargs["pixel_values"]
        size = config.vision_config.image_size
        tiles = list(pixels) if pixels.ndim == 5 else list(pixels.split(n_views))
        pictures = []
        for image, (crops, n) in enumerate(zip(tiles, n_views)):
            pictures.append(crops[0])
            if n > 1:
                rows, cols = get_anyres_image_grid_shape(kwargs["image_sizes"][image].tolist(),
                                                         config.image_grid_pinpoints, size)
                grid = crops[1:n].reshape(rows, cols, 3, size, size).permute(2, 0, 3, 1, 4)
                pictures.append(unpad_image(grid.reshape(3, rows * size, cols * size), kwargs["image_sizes"][image]))
        return pictures

    # -- keep plans and features ----------------------------------------------------------------
    def segment_keep(self, encoded: PackedMedia, plan: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per segment, sorted packed rows kept: each view's kept patches plus every newline."""
        keep = []
        for views, fixed in zip(encoded.segment_views, encoded.fixed_rows):
            parts = [fixed] + [encoded.view_rows[v][plan[v].cpu()] for v in views]
            keep.append(torch.cat(parts).sort().values)
        return keep

    def reduced_outputs(self, encoded: PackedMedia, keep: list[torch.Tensor]):
        """A copy of the feature output holding the kept packed rows: ``pooler_output`` per image for images,
        ``(n_videos, k, D)`` (``(1, Σk, D)`` when videos keep different counts) for videos."""
        packed = list(encoded.packed)
        for s, views in enumerate(encoded.segment_views):
            merged = [v for v in views if encoded.visual.features[v] is not encoded.view_features[v]]
            if merged:  # a merging reducer (MergedView) replaced these views' features
                packed[s] = packed[s].clone()
                for v in merged:
                    packed[s][encoded.view_rows[v].to(packed[s].device)] = encoded.visual.features[v].to(packed[s].dtype)
        rows = [f.index_select(0, k.to(f.device)) for f, k in zip(packed, keep)]
        outputs = copy.copy(encoded.outputs)
        if encoded.modality == "image":
            outputs.pooler_output = rows
        else:
            outputs.pooler_output = torch.stack(rows) if len({len(r) for r in rows}) == 1 else torch.cat(rows)[None]
        return outputs
