"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one CLIP view per image, a 24×24 grid at 336 px.

Module paths (transformers 5.24): vision tower ``model.model.vision_tower`` (CLIPVisionModel, layers
at ``.encoder.layers``), projector ``model.model.multi_modal_projector``. ``get_image_features``
returns ``pooler_output`` as a list of ``(N, D)`` projected features per image.
"""
from __future__ import annotations

import torch

from vtr.adapters.base import Adapter, Encoded
from vtr.signals import QKProbe, cls_attention
from vtr.visual import Signals, View, VisualTokens


def feature_layer_index(vision_feature_layer: int | list[int], n_layers: int) -> int:
    """Encoder layer whose output is ``hidden_states[vision_feature_layer]``.

    ``hidden_states[0]`` is the embedding output, so ``hidden_states[i]`` is the output of
    ``layers[i - 1]``; -2 on a 24-layer CLIP is ``layers[22]``. For a list of feature layers the
    last one is used (the deepest, for the usual increasing lists).
    """
    layer = vision_feature_layer[-1] if isinstance(vision_feature_layer, (list, tuple)) else vision_feature_layer
    index = layer % (n_layers + 1) - 1
    if index < 0:
        raise ValueError(f"vision_feature_layer={layer} selects the embeddings, which have no attention to score")
    return index


def first_given(*values):
    """The first value that is not None (0 is a valid layer index)."""
    return next(v for v in values if v is not None)


class ClipTowerAdapter(Adapter):
    """Shared by families whose vision tower is transformers' ``CLIPVisionModel`` with a [CLS]."""

    def run_clip_tower(self, tower, encode_fn, feature_layer, **encode_kwargs):
        """Call the model's own feature function with a q/k probe on the feature layer.

        Returns ``(outputs, cls_scores_provider)``; the provider yields ``(n_images, n_patches)``.
        """
        attention = tower.encoder.layers[feature_layer_index(feature_layer, len(tower.encoder.layers))].self_attn
        with QKProbe(attention, attention.num_heads, attention.scale) as probe:
            outputs = encode_fn(return_dict=True, **encode_kwargs)
        q, k = probe.captured()
        return outputs, lambda: cls_attention(q, k, probe.num_heads, probe.scale)


class LlavaAdapter(ClipTowerAdapter):
    family = "llava"
    model_classes = ("LlavaForConditionalGeneration",)
    visual_inputs = ("pixel_values",)
    rejected_inputs = {
        "pixel_values_videos": "LLaVA-1.5 takes images only (pass pixel_values); use Video-LLaVA or Qwen2-VL for video",
    }

    def encode(self, kwargs: dict) -> list[Encoded]:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        config, base = self.model.config, self.model.model
        layer = first_given(kwargs.get("vision_feature_layer"), config.vision_feature_layer)
        strategy = first_given(kwargs.get("vision_feature_select_strategy"), config.vision_feature_select_strategy)
        extra = {"image_sizes": kwargs["image_sizes"]} if kwargs.get("image_sizes") is not None else {}
        outputs, cls_scores = self.run_clip_tower(
            base.vision_tower, base.get_image_features, layer, pixel_values=pixel_values,
            vision_feature_layer=layer, vision_feature_select_strategy=strategy, **extra,
        )
        features = list(outputs.pooler_output)
        n_prefix = 0 if strategy == "default" else 1  # "full" keeps the [CLS] feature in front
        side = base.vision_tower.config.image_size // base.vision_tower.config.patch_size
        samples = self.image_rows(kwargs["input_ids"], len(features), features[0].shape[0])
        views = [View(sample=s, grid=(side, side), n_prefix=n_prefix, token_id=config.image_token_id) for s in samples]
        signals = Signals(self.family, {"cls_attention": lambda: list(cls_scores())})
        return [Encoded("image", VisualTokens(features, views, signals), outputs)]

    def image_rows(self, input_ids: torch.Tensor, n_images: int, tokens_per_image: int) -> list[int]:
        """Batch row of each image, from the placeholder counts of each row."""
        counts = (input_ids == self.model.config.image_token_id).sum(dim=1).tolist()
        if any(c % tokens_per_image for c in counts) or sum(counts) != n_images * tokens_per_image:
            raise ValueError(
                f"input_ids hold {counts} image placeholders per row but pixel_values give {n_images} image(s) of "
                f"{tokens_per_image} tokens; build the prompt with the model's processor"
            )
        return [row for row, c in enumerate(counts) for _ in range(c // tokens_per_image)]

    def reduced_outputs(self, encoded: Encoded, keep: list[torch.Tensor]):
        outputs = encoded.outputs
        outputs.pooler_output = [f.index_select(0, k.to(f.device)) for f, k in zip(encoded.visual.features, keep)]
        return outputs
