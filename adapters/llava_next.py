"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): AnyRes views packed with stock ``spatial_unpad``.

How transformers 5.24 builds an image's tokens (``LlavaNextModel.get_image_features``):
the CLIP tower runs on every view of every image (``B·views`` crops of 336 px, [CLS] + 24×24
patches); the [CLS] feature is dropped (``"default"`` strategy) and the patches are projected;
``pack_image_features`` then lays out, per image, the base (thumbnail) view's 576 patches, followed
by the crops stitched into one big grid, *unpadded* (patch rows or columns that only cover the
letterbox padding are removed) and with an ``image_newline`` vector after every big-grid row.
``pooler_output`` is the list of packed ``(L_i, D)`` tensors, one per image, and the prompt holds one
run of ``L_i`` placeholders per image.

What vtr sees:

- Views: per image ``[base view, crop 1, crop 2, ...]`` (crops in the processor's raster order),
  ``n_prefix = 0``; ``keep`` applies per view.
- Unpadding rule: **a crop view is the patches of that crop that survive unpadding.** Its grid
  is the surviving sub-rectangle of the crop (unpadding removes whole big-grid rows or columns, so
  what survives of a crop is a rectangle), its signals are the surviving patches' scores (the
  [CLS] softmax over the whole crop, restricted, not renormalised), and the budget is
  ``keep`` of the surviving patches. A reducer therefore never picks a patch the model would
  drop. A crop with no surviving patch (possible with extreme aspect ratios) has no view. FasterVLM's
  reference ``spatial_unpad`` branch instead ranks all patches of a crop and drops the unpadded
  ones afterwards (fewer than ``keep`` may survive); this difference is noted in the call's stats.
- ``image_newline`` rows are always kept (they carry no image content; the model relies on them
  to mark rows).
- Segments: one per image, its whole packed run. Kept tokens are mapped to packed rows through
  the model's own packer, not a re-derivation of its arithmetic: an index tensor (the value of
  each "feature" is its ``view * n_patches + patch`` id, ``image_newline = -1``) is pushed through
  ``pack_image_features``, which returns the source of every packed row.

Only ``vision_feature_select_strategy="default"`` is accepted: with ``"full"`` the stock packer
reshapes ``577`` tokens per crop into a 24×24 grid, which does not describe a real layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vtr.adapters.base import Encoded
from vtr.adapters.clip_tower import ClipTowerAdapter, first_given, tower_signals
from vtr.adapters.layout import item_rows
from vtr.engine.splice import Segment
from vtr.signals import Signal
from vtr.visual import Signals, View, VisualTokens

UNPAD_NOTE = (
    "llava_next: AnyRes crop views hold only the patches that survive spatial_unpad, and keep applies to "
    "those (FasterVLM's reference ranks all patches of a crop, then drops the unpadded ones)"
)


@dataclass
class PackedImages(Encoded):
    """:class:`Encoded` plus the packing map of each image.

    Attributes:
        packed: per image, the model's packed ``(L_i, D)`` features (``pooler_output``).
        view_rows: per view, ``(n_patches,)`` packed row of each patch, in the view's raster order.
        image_views: per image, the indices of its views in ``visual.views``.
        newline_rows: per image, the packed rows holding ``image_newline``.
    """

    packed: list[torch.Tensor] = field(default_factory=list)
    view_rows: list[torch.Tensor] = field(default_factory=list)
    image_views: list[list[int]] = field(default_factory=list)
    newline_rows: list[torch.Tensor] = field(default_factory=list)
    view_features: list[torch.Tensor] = field(default_factory=list)  # per view, as encoded (before any merge)


class LlavaNextAdapter(ClipTowerAdapter):
    family = "llava_next"
    provides = ClipTowerAdapter.provides | {Signal.ANYRES_LAYOUT}
    model_classes = ("LlavaNextForConditionalGeneration",)
    visual_inputs = ("pixel_values",)
    rejected_inputs = {
        "pixel_values_videos": "LLaVA-NeXT (LlavaNextForConditionalGeneration) takes images only (pass pixel_values "
        "and image_sizes); use Video-LLaVA or Qwen2-VL for video",
    }

    def encode(self, kwargs: dict) -> list[Encoded]:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        image_sizes = kwargs.get("image_sizes")
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (the (height, width) of each image) alongside pixel_values; "
                             "pass the processor's image_sizes")
        config, base = self.model.config, self.model.model
        layer = first_given(kwargs.get("vision_feature_layer"), config.vision_feature_layer)
        strategy = first_given(kwargs.get("vision_feature_select_strategy"), config.vision_feature_select_strategy)
        if strategy != "default":
            raise ValueError(f"vision_feature_select_strategy={strategy!r} is not supported for LLaVA-NeXT; allowed: "
                             "'default' (AnyRes packing lays out patch grids, which the [CLS] feature is not part of)")
        outputs, cls_scores = self.run_clip_tower(
            base.vision_tower, base.get_image_features, layer, pixel_values=pixel_values, image_sizes=image_sizes,
            vision_feature_layer=layer, vision_feature_select_strategy=strategy,
        )
        packed = list(outputs.pooler_output)
        side = config.vision_config.image_size // config.vision_config.patch_size
        n_views = self.views_per_image(image_sizes)
        sources = self.packed_sources(packed, n_views, image_sizes, strategy, side * side)
        samples = item_rows(kwargs["input_ids"], config.image_token_id, [len(p) for p in packed], "image",
                            "pixel_values/image_sizes")

        layout = self.view_layout(sources, samples, n_views, side)
        views, view_rows, view_crops, image_views, newline_rows = layout
        dropped = sum(v.n_patches for v in views) < sum(n_views) * side * side  # unpadding removed patches
        features = [packed[img].index_select(0, view_rows[v].to(packed[img].device))
                    for img, vs in enumerate(image_views) for v in vs]

        def per_view(scores: torch.Tensor) -> list[torch.Tensor]:  # (total crops, ..., side*side) -> views
            return [scores[crop].index_select(-1, patches.to(scores.device)) for crop, patches in view_crops]

        def anyres_layout() -> list[torch.Tensor]:
            return self.anyres_layout(image_sizes, n_views, view_crops, image_views, view_rows, newline_rows, side)

        signals = Signals(self.family, {**tower_signals(cls_scores, per_view), Signal.ANYRES_LAYOUT: anyres_layout})
        visual = VisualTokens(features, views, signals, notes=[UNPAD_NOTE] if dropped else [])
        segments = [Segment(s, len(p), config.image_token_id) for s, p in zip(samples, packed)]
        return [PackedImages("image", visual, outputs, segments, packed=packed, view_rows=view_rows,
                             image_views=image_views, newline_rows=newline_rows, view_features=list(features))]

    def packed_sources(self, packed, n_views: list[int], image_sizes, strategy: str, n_patches: int):
        """Per image, an ``(L_i,)`` int64 tensor: the ``view * n_patches + patch`` id of each packed
        row, -1 for ``image_newline`` rows.

        The model's own packer is fed, per image, ``(n_views, n_patches, 1)`` "features" whose value
        is their id; whatever it unpads, reorders or inserts is read off its output.
        """
        ids = [torch.arange(n * n_patches, dtype=torch.float64).view(n, n_patches, 1) for n in n_views]
        newline = torch.tensor([-1.0], dtype=torch.float64)
        with torch.no_grad():
            sources, _ = self.model.model.pack_image_features(ids, image_sizes.cpu(), strategy, image_newline=newline)
        sources = [s[:, 0].round().long() for s in sources]
        lengths = [len(p) for p in packed]
        if [len(s) for s in sources] != lengths:
            raise RuntimeError(f"LLaVA-NeXT packing map has lengths {[len(s) for s in sources]}, features {lengths}")
        return sources

    def views_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        """Views (base + crops) the model encodes for each image, from its own AnyRes helper."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        return [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
                for size in image_sizes.tolist()]

    def view_layout(self, sources: list[torch.Tensor], samples: list[int], n_views: list[int], side: int):
        """Views of every image and where their patches sit in the packed output.

        Returns ``(views, view_rows, view_crops, image_views, newline_rows)``: per view its
        :class:`View`, its packed rows ``(n,)`` and ``(tower crop index, surviving patch ids (n,))``
        in the view's raster order; per image its view indices and its newline rows.
        """
        n_patches = side * side
        views, view_rows, view_crops, image_views, newline_rows = [], [], [], [], []
        first_crop = 0  # index of this image's first view among all tower inputs
        for source, sample, n_image_views in zip(sources, samples, n_views):
            newline_rows.append((source < 0).nonzero().squeeze(1))
            image_views.append([])
            for view_index in range(n_image_views):
                rows = ((source >= 0) & (source // n_patches == view_index)).nonzero().squeeze(1)
                if len(rows) == 0:
                    continue  # the whole crop was letterbox padding
                patches = source[rows] % n_patches
                order = patches.argsort()
                image_views[-1].append(len(views))
                views.append(View(sample=sample, grid=surviving_grid(patches, side), n_prefix=0,
                                  token_id=self.model.config.image_token_id))
                view_rows.append(rows[order])
                view_crops.append((first_crop + view_index, patches[order]))
            first_crop += n_image_views
        return views, view_rows, view_crops, image_views, newline_rows

    def anyres_layout(self, image_sizes, n_views, view_crops, image_views, view_rows, newline_rows, side):
        """Per view, an int64 tensor ``[image, crop_row, crop_col, grid_rows, grid_cols, row0, col0, rows, cols]``
        placing it in its image's AnyRes layout (the ``"anyres_layout"`` signal):

        - ``crop_row, crop_col``: its cell in the image's ``grid_rows × grid_cols`` AnyRes grid of crops
          (``-1, -1`` for the base view, the thumbnail);
        - ``row0, col0``: its top-left surviving patch in the image's unpadded stitched crop grid of
          ``rows × cols`` patches (``0, 0`` for the base view), read off the packed rows: after the base
          view's ``side²`` rows, each grid row is ``cols`` patches followed by one ``image_newline``.
        """
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        config, n_base = self.model.config, side * side
        layout, first = [None] * len(view_crops), 0
        for image, (views, newlines) in enumerate(zip(image_views, newline_rows)):
            grid_rows, grid_cols = get_anyres_image_grid_shape(
                image_sizes[image], config.image_grid_pinpoints, config.vision_config.image_size)
            rows = len(newlines)
            cols = int(newlines[0]) - n_base if rows else 0
            for v in views:
                crop, _ = view_crops[v]
                if crop == first:  # the base view
                    cell = (-1, -1, 0, 0)
                else:
                    index, top_left = crop - first - 1, int(view_rows[v][0]) - n_base
                    cell = (index // grid_cols, index % grid_cols, top_left // (cols + 1), top_left % (cols + 1))
                layout[v] = torch.tensor([image, cell[0], cell[1], grid_rows, grid_cols, cell[2], cell[3], rows, cols])
            first += n_views[image]
        return layout

    def segment_keep(self, encoded: PackedImages, plan: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per image, sorted packed rows kept: the kept patches of each of its views plus every newline."""
        keep = []
        for views, newlines in zip(encoded.image_views, encoded.newline_rows):
            parts = [newlines] + [encoded.view_rows[v][plan[v].to(encoded.view_rows[v].device)] for v in views]
            keep.append(torch.cat(parts).sort().values)
        return keep

    def reduced_outputs(self, encoded: PackedImages, keep: list[torch.Tensor]):
        """``pooler_output`` = per image the packed ``(L_i', D)`` rows that were kept, in packed order."""
        outputs = encoded.outputs
        packed = list(encoded.packed)
        for image, views in enumerate(encoded.image_views):
            # a merging reducer (MergedView) replaced these views' features: write them into the packed rows
            merged = [v for v in views
                      if encoded.view_features and encoded.visual.features[v] is not encoded.view_features[v]]
            if merged:
                packed[image] = packed[image].clone()
                for v in merged:
                    rows = encoded.view_rows[v].to(packed[image].device)
                    packed[image][rows] = encoded.visual.features[v].to(packed[image].dtype)
        outputs.pooler_output = [f.index_select(0, k.to(f.device)) for f, k in zip(packed, keep)]
        return outputs

    def splice(self, kwargs, encoded, keep, positions, for_generate):
        # image_sizes only describes raw pixels, which the reduced call no longer carries
        new, columns = super().splice(kwargs, encoded, keep, positions, for_generate)
        new.pop("image_sizes", None)
        return new, columns


def surviving_grid(patches: torch.Tensor, side: int) -> tuple[int, int]:
    """``(h, w)`` of the sub-rectangle that a crop's surviving patch ids form in its ``side×side`` grid.

    Unpadding removes whole rows or columns of the stitched grid, so the survivors of one crop are
    a rectangle; if a future packer breaks that, the view degrades to one row of its patches.
    """
    rows, cols = (patches // side).unique(), (patches % side).unique()
    if len(rows) * len(cols) == len(patches):
        return int(len(rows)), int(len(cols))
    return 1, int(len(patches))
