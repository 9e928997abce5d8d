"""Gemma 3 (`Gemma3ForConditionalGeneration`): a SigLIP tower (no [CLS]) average-pooled to ``mm_tokens_per_image``
tokens per image, bidirectional attention over each image's tokens in the LLM.

Module paths (transformers 5.24, ``models/gemma3/modeling_gemma3.py``): vision tower ``model.model.vision_tower``
(``SiglipVisionModel``; the features are its ``last_hidden_state``, so the feature layer is the last encoder
layer), projector ``model.model.multi_modal_projector`` (``avg_pool``: ``AvgPool2d`` from the
``image_size/patch_size`` patch grid to ``√mm_tokens_per_image`` per side, 4×4 patches per token on the real
model, then an RMSNorm and a projection). ``get_image_features(pixel_values)`` returns ``pooler_output``
``(n_images, mm_tokens_per_image, D)``; the prompt holds ``<start_of_image>`` + one run of
``mm_tokens_per_image`` placeholders + ``<end_of_image>`` per image (per pan-and-scan crop, each its own image).

What vtr sees: one view per image (or crop) with the pooled grid (16×16 on the real model); ``keep`` counts its
pooled tokens. The signals are SigLIP's adapted ones (:mod:`vtr.adapters.siglip_tower`), average-pooled with the
projector's own ``avg_pool`` like the features.

The LLM: ``token_type_ids`` (1 at image placeholders) make each image's run attend to itself bidirectionally;
they are gathered with the kept columns, so the kept tokens of an image still see each other both ways,
exactly as the unpatched model fed only those tokens. Sliding-window layers count kept tokens (the window is
over sequence indices, as for any shorter prompt). Kept tokens keep their original position ids by default.

Reducers that drop tokens *inside* the LLM (fastv, aim's pruning, atp, dart) are refused at patch time: the
Gemma 3 decoder passes per-layer-type masks and rotary embeddings (sliding vs full) and normalises q/k before
RoPE, which vtr's in-LLM engine and probes do not model.
"""
from __future__ import annotations

import copy

import torch

from vtr.adapters.base import Adapter, Encoded
from vtr.adapters.layout import item_rows
from vtr.adapters.siglip_tower import SIGLIP_SIGNALS, probe_feature_layer, siglip_tokens
from vtr.visual import View

LAYOUT_NOTE = "average-pooled like the features with the projector's own pooling"


class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_classes = ("Gemma3ForConditionalGeneration",)
    provides = SIGLIP_SIGNALS
    visual_inputs = ("pixel_values",)
    rejected_inputs = {
        "pixel_values_videos": "Gemma 3 takes images only (pass pixel_values); use LLaVA-OneVision, Qwen2-VL, "
        "Qwen2.5-VL or Video-LLaVA for video",
        "image_sizes": "Gemma 3 resizes every image (or pan-and-scan crop) to one square size; pass the processor's output",
    }
    in_llm_refusal = ("its decoder uses per-layer-type masks and rotary embeddings (sliding and full attention) and "
                      "q/k norms, which vtr's in-LLM engine does not model")

    def check_inputs(self, kwargs: dict) -> None:
        super().check_inputs(kwargs)
        pixels = kwargs.get("pixel_values")
        if pixels is not None and kwargs.get("token_type_ids") is None:
            raise ValueError("Gemma 3 needs token_type_ids (1 at image placeholders) alongside pixel_values for its "
                             "bidirectional image attention; pass the processor's token_type_ids")

    def encode(self, kwargs: dict) -> list[Encoded]:
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return []
        config, base = self.model.config, self.model.model
        with probe_feature_layer(base.vision_tower, -1) as probe:  # last_hidden_state: the last layer's output
            outputs = base.get_image_features(pixels, return_dict=True)
        features = list(outputs.pooler_output)  # (mm_tokens_per_image, D) per image
        side = int(round(config.mm_tokens_per_image ** 0.5))
        samples = item_rows(kwargs["input_ids"], config.image_token_id, [len(f) for f in features], "image",
                            "pixel_values")
        views = [View(sample=s, grid=(side, side), n_prefix=0, token_id=config.image_token_id) for s in samples]
        patches = config.vision_config.image_size // config.vision_config.patch_size
        pool = base.multi_modal_projector.avg_pool

        def per_view(scores: torch.Tensor) -> list[torch.Tensor]:  # (n, C, P) -> per view (C, side²)
            n, channels, _ = scores.shape
            return list(pool(scores.reshape(n, channels, patches, patches)).flatten(2))

        tokens = siglip_tokens(self.family, LAYOUT_NOTE, features, views, probe[0], per_view)
        return [Encoded("image", tokens, outputs)]

    def reduced_outputs(self, encoded: Encoded, keep: list[torch.Tensor]):
        """A copy of the feature output whose ``pooler_output`` holds the kept tokens in prompt order, from
        ``visual.features`` (where a merging reducer writes its merged features): ``(n_images, k, D)`` like the
        unpatched model's when every image keeps ``k`` tokens (the model returns it as ``image_outputs``), else
        ``(1, Σk, D)`` (the model scatters the flattened rows into the placeholders either way)."""
        outputs = copy.copy(encoded.outputs)
        rows = [f.index_select(0, k.to(f.device)) for f, k in zip(encoded.visual.features, keep)]
        same = len({r.shape[0] for r in rows}) == 1
        outputs.pooler_output = torch.stack(rows) if same else torch.cat(rows)[None]
        return outputs
