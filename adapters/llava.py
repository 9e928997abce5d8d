"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one CLIP view per image, a 24×24 grid at 336 px.

Module paths (transformers 5.24): vision tower ``model.model.vision_tower`` (CLIPVisionModel, layers
at ``.encoder.layers``), projector ``model.model.multi_modal_projector``. ``get_image_features``
returns ``pooler_output`` as a list of ``(N, D)`` projected features per image.

Besides the CLIP tower's signals, LLaVA-1.5 serves what AIM's reference mode reads (``aim`` with
``reference="llava"``): the tower's last-layer keys, the projector's input features, and
:meth:`LlavaAdapter.project_features` to project features merged before the projector.
"""
from __future__ import annotations

import torch

from vtr.adapters.base import Encoded
from vtr.adapters.clip_tower import TOWER_SIGNALS, ClipTowerAdapter, first_given, tower_signals
from vtr.adapters.layout import item_rows
from vtr.signals import PRE_PROJECTOR_SIGNALS, Signal
from vtr.visual import Signals, View, VisualTokens


class LlavaAdapter(ClipTowerAdapter):
    family = "llava"
    model_classes = ("LlavaForConditionalGeneration",)
    visual_inputs = ("pixel_values",)
    rejected_inputs = {
        "pixel_values_videos": "LLaVA-1.5 takes images only (pass pixel_values); use Video-LLaVA or Qwen2-VL for video",
    }
    provides = TOWER_SIGNALS | PRE_PROJECTOR_SIGNALS

    def encode(self, kwargs: dict) -> list[Encoded]:
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        config, base = self.model.config, self.model.model
        layer = first_given(kwargs.get("vision_feature_layer"), config.vision_feature_layer)
        strategy = first_given(kwargs.get("vision_feature_select_strategy"), config.vision_feature_select_strategy)
        extra = {"image_sizes": kwargs["image_sizes"]} if kwargs.get("image_sizes") is not None else {}
        outputs, cls_scores = self.run_clip_tower(
            base.vision_tower, base.get_image_features, layer, projector=base.multi_modal_projector,
            pixel_values=pixel_values,
            vision_feature_layer=layer, vision_feature_select_strategy=strategy, **extra,
        )
        features = list(outputs.pooler_output)
        n_prefix = 0 if strategy == "default" else 1  # "full" keeps the [CLS] feature in front
        side = base.vision_tower.config.image_size // base.vision_tower.config.patch_size
        samples = item_rows(kwargs["input_ids"], config.image_token_id, [f.shape[0] for f in features], "image",
                            "pixel_values")
        views = [View(sample=s, grid=(side, side), n_prefix=n_prefix, token_id=config.image_token_id) for s in samples]
        signals = Signals(self.family, tower_signals(cls_scores, list))
        counts = [f.shape[0] for f in features]
        signals.add(Signal.TOWER_LAST_KEYS, lambda: list(cls_scores.tower_last_keys()))
        signals.add(Signal.PRE_PROJECTOR_FEATURES, lambda: self.pre_projector_features(cls_scores, counts))
        return [Encoded("image", VisualTokens(features, views, signals), outputs)]

    @staticmethod
    def pre_projector_features(probes, counts: list[int]) -> list[torch.Tensor]:
        """Per image, the ``(N, D_vision)`` rows the projector mapped to its features (the projector's input)."""
        selected = probes.recorded(probes.projector_input, "the projector's input")
        return list(selected.reshape(-1, selected.shape[-1]).split(counts))

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(k, D_vision)`` → ``(k, D)``: the model's own projector (it maps each token on its own)."""
        return self.model.model.multi_modal_projector(features)

    def reduced_outputs(self, encoded: Encoded, keep: list[torch.Tensor]):
        outputs = encoded.outputs
        outputs.pooler_output = [f.index_select(0, k.to(f.device)) for f, k in zip(encoded.visual.features, keep)]
        return outputs
