"""Video-LLaVA (`VideoLlavaForConditionalGeneration`): images and 8-frame videos, two CLIP towers.

Module paths (transformers 5.24): ``model.model.image_tower`` and ``model.model.video_tower`` (two
CLIPVisionModels with the same config), one shared projector ``model.model.multi_modal_projector``.

* Images: ``get_image_features`` → ``pooler_output`` tensor ``(n_images, 256, D)`` (the [CLS] is
  dropped under ``vision_feature_select_strategy="default"``, kept in front under ``"full"``). One
  view per image; one ``<image>`` run of 256 placeholders per image.
* Videos: ``get_video_features`` → ``pooler_output`` tensor ``(n_videos · T, 257, D)``: every frame
  keeps its [CLS] in front of its 16×16 patches, whatever the select strategy. One view per frame
  (``keep`` applies to each frame's 256 patches); one ``<video>`` run of ``T · 257`` placeholders per
  video, so a video is one segment that packs T frame views.
* The model's forward flattens dims 0 and 1 of each feature tensor before scattering it into the
  placeholders, so reduced features may be any ``(rows, k, D)`` whose rows follow placeholder order.

Adapter option (set on the live handle, applies from the next call)::

    model.vtr.adapter.keep_frame_cls = False   # default True

``True`` keeps every frame's [CLS] feature (it is the frame's prefix token, like LLaVA's "full"
strategy), so ``keep=1.0`` is the identity. ``False`` drops the T frame [CLS] features of every
video as well (T fewer tokens per video); this is not in Video-LLaVA, so ``keep=1.0`` is then *not*
the identity, and the call's stats carry a note saying so.

Views are listed images first, then every frame of every video (video-major, frames in time
order); ``model.vtr.stats.views`` follows that order. Both modalities may appear in one prompt and
in one batch, in any rows.

FasterVLM's [CLS] attention is taken per frame from the video tower's feature layer (and per image
from the image tower's), computed from that layer's q/k projections.
"""
from __future__ import annotations

import copy

import torch

from vtr.adapters.base import Encoded
from vtr.adapters.layout import describe_views, item_rows
from vtr.adapters.clip_tower import ClipTowerAdapter, first_given, tower_signals
from vtr.engine.splice import Segment
from vtr.visual import Signals, View, VisualTokens

FRAME_CLS_DROPPED = ("video frames' [CLS] features are dropped (adapter option keep_frame_cls=False, not in "
                     "Video-LLaVA): T fewer tokens per video, and keep=1.0 is not the identity")


class VideoLlavaAdapter(ClipTowerAdapter):
    family = "video_llava"
    model_classes = ("VideoLlavaForConditionalGeneration",)
    # pixel_values_images is the deprecated name of pixel_values that the processor still returns by default
    visual_inputs = ("pixel_values", "pixel_values_images", "pixel_values_videos")
    rejected_inputs = {
        "image_sizes": "Video-LLaVA resizes every image to one square size (no AnyRes); pass the processor's output",
        "image_grid_thw": "that is a Qwen2-VL input; pass Video-LLaVA's processor output",
        "video_grid_thw": "that is a Qwen2-VL input; pass Video-LLaVA's processor output",
    }

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self._keep_frame_cls = True

    @property
    def keep_frame_cls(self) -> bool:
        """Keep each video frame's [CLS] feature (default ``True``; see the module docstring)."""
        return self._keep_frame_cls

    @keep_frame_cls.setter
    def keep_frame_cls(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"keep_frame_cls must be True or False, got {type(value).__name__} {value!r}")
        self._keep_frame_cls = value

    # -- inputs ---------------------------------------------------------------------------------
    def check_inputs(self, kwargs: dict) -> None:
        super().check_inputs(kwargs)
        if kwargs.get("pixel_values") is not None and kwargs.get("pixel_values_images") is not None:
            raise ValueError("pass images as pixel_values or as the deprecated pixel_values_images, not both")
        layouts = {"pixel_values": (self.images(kwargs), "(n_images, 3, H, W)"),
                   "pixel_values_videos": (kwargs.get("pixel_values_videos"), "(n_videos, n_frames, 3, H, W)")}
        for key, (value, layout) in layouts.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.ndim != layout.count(",") + 1:
                got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{key} must be a {layout} tensor (pass the processor's output), got {got}")

    @staticmethod
    def images(kwargs: dict) -> torch.Tensor | None:
        images = kwargs.get("pixel_values")
        return images if images is not None else kwargs.get("pixel_values_images")

    def encode(self, kwargs: dict) -> list[Encoded]:
        config = self.model.config
        layer = first_given(kwargs.get("vision_feature_layer"), config.vision_feature_layer)
        encoded = []
        if self.images(kwargs) is not None:
            strategy = first_given(kwargs.get("vision_feature_select_strategy"), config.vision_feature_select_strategy)
            encoded.append(self.encode_images(kwargs["input_ids"], self.images(kwargs), layer, strategy))
        if kwargs.get("pixel_values_videos") is not None:
            encoded.append(self.encode_videos(kwargs["input_ids"], kwargs["pixel_values_videos"], layer))
        for e in encoded:
            self.describe_media(e, kwargs)
        return encoded

    def describe_media(self, encoded: Encoded, kwargs: dict) -> None:
        """Fill the optional :class:`~vtr.visual.VisualTokens` fields (item/frame of each view, prompt
        ids, single-view model inputs, pixels) that reducers asking the model about views need (QuoTA).
        A single view is shown to the LLM as a one-frame video (video) or one image (image)."""
        visual, video = encoded.visual, encoded.modality == "video"
        pixels = kwargs["pixel_values_videos"] if video else self.images(kwargs)

        def view_inputs(views: list[int], input_ids: torch.Tensor) -> dict:
            outputs = copy.copy(encoded.outputs)
            outputs.pooler_output = torch.stack([visual.features[v] for v in views])  # (n, n_tokens, D)
            return {"mm_encoder_outputs": {encoded.modality: outputs}}

        describe_views(visual, encoded.modality, kwargs, [pixels.shape[1] if video else 0] * pixels.shape[0],
                       lambda: list(pixels.flatten(0, 1) if video else pixels), view_inputs)

    def encode_images(self, input_ids, pixel_values, layer, strategy) -> Encoded:
        """One view per image; features ``(256, D)`` each (``(257, D)``, [CLS] first, under "full")."""
        base, config = self.model.model, self.model.config
        outputs, cls_scores = self.run_clip_tower(
            base.image_tower, base.get_image_features, layer, pixel_values=pixel_values,
            vision_feature_layer=layer, vision_feature_select_strategy=strategy,
        )
        features = list(outputs.pooler_output)
        n_prefix = 0 if strategy == "default" else 1
        side = self.grid_side(base.image_tower)
        samples = item_rows(input_ids, config.image_token_id, [f.shape[0] for f in features], "image", "pixel_values")
        views = [View(sample=s, grid=(side, side), n_prefix=n_prefix, token_id=config.image_token_id) for s in samples]
        signals = Signals(self.family, tower_signals(cls_scores, list))
        return Encoded("image", VisualTokens(features, views, signals), outputs)

    def encode_videos(self, input_ids, pixel_values_videos, layer) -> Encoded:
        """One view per frame (256 patches, the frame's [CLS] as prefix); one segment per video."""
        base, config = self.model.model, self.model.config
        n_videos, n_frames = pixel_values_videos.shape[:2]
        outputs, cls_scores = self.run_clip_tower(
            base.video_tower, base.get_video_features, layer, pixel_values_videos=pixel_values_videos,
            vision_feature_layer=layer,
        )
        frames = outputs.pooler_output  # (n_videos * T, 1 + 256, D): each frame's [CLS] first
        n_prefix = 1 if self.keep_frame_cls else 0
        features = [f if n_prefix else f[1:] for f in frames]
        side = self.grid_side(base.video_tower)
        samples = item_rows(input_ids, config.video_token_id, [n_frames * frames.shape[1]] * n_videos, "video",
                            "pixel_values_videos")
        views = [View(sample=s, grid=(side, side), n_prefix=n_prefix, token_id=config.video_token_id)
                 for s in samples for _ in range(n_frames)]
        segments = [Segment(s, n_frames * frames.shape[1], config.video_token_id) for s in samples]
        signals = Signals(self.family, tower_signals(cls_scores, list))  # per frame: (256,) …
        notes = [] if self.keep_frame_cls else [FRAME_CLS_DROPPED]
        return Encoded("video", VisualTokens(features, views, signals, notes), outputs, segments)

    @staticmethod
    def grid_side(tower) -> int:
        return tower.config.image_size // tower.config.patch_size

    # -- keep plan → tokens → features ----------------------------------------------------------
    def segment_keep(self, encoded: Encoded, plan: list[torch.Tensor]) -> list[torch.Tensor]:
        """Images: one segment per view. Videos: frame ``f`` of a video owns tokens
        ``[f·257, (f+1)·257)`` of its segment, [CLS] first; its kept patches ``p`` are tokens
        ``f·257 + 1 + p``, and its [CLS] ``f·257`` is kept when it is the view's prefix."""
        if encoded.modality != "video":
            return super().segment_keep(encoded, plan)
        views = encoded.visual.views
        frames_per_video = len(views) // len(encoded.segments)
        keep = []
        for s, segment in enumerate(encoded.segments):
            tokens_per_frame = segment.n_tokens // frames_per_video
            per_frame = []
            for f in range(frames_per_video):
                view, patches = views[s * frames_per_video + f], plan[s * frames_per_video + f]
                first_patch = tokens_per_frame - view.n_patches  # 1: the frame's [CLS] comes first
                in_frame = torch.cat([torch.arange(view.n_prefix, device=patches.device), patches + first_patch])
                per_frame.append(in_frame + f * tokens_per_frame)
            keep.append(torch.cat(per_frame))
        return keep

    def reduced_outputs(self, encoded: Encoded, keep: list[torch.Tensor]):
        """A copy of the model's feature output whose ``pooler_output`` holds only the kept tokens,
        taken from ``encoded.visual.features`` (where a merging reducer writes its merged features):
        ``(n_segments, k, D)`` when every segment keeps ``k`` tokens, else ``(1, Σk, D)`` (forward
        flattens dims 0 and 1 either way)."""
        features, views = encoded.visual.features, encoded.visual.views
        views_per_segment = len(views) // len(encoded.segments)
        rows = []
        for s, (segment, kept) in enumerate(zip(encoded.segments, keep)):
            n_tokens = views[s * views_per_segment].n_tokens  # feature rows per view
            tokens_per_view = segment.n_tokens // views_per_segment  # placeholders per view (257 for a frame)
            kept = kept.to(features[0].device)
            view_in_segment, token_in_view = kept // tokens_per_view, kept % tokens_per_view
            # a view's feature rows start at its token (tokens_per_view - n_tokens): 1 when the
            # frame's [CLS] was left out of the view (keep_frame_cls=False), else 0
            row = view_in_segment * n_tokens + token_in_view - (tokens_per_view - n_tokens)
            segment_features = torch.cat(features[s * views_per_segment:(s + 1) * views_per_segment])
            rows.append(segment_features.index_select(0, row))
        outputs = copy.copy(encoded.outputs)
        if len({len(r) for r in rows}) == 1:
            outputs.pooler_output = torch.stack(rows)
        else:
            outputs.pooler_output = torch.cat(rows)[None]
        return outputs
