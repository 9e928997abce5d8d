"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one CLIP view per image, a 24×24 grid at 336 px.

Module paths (transformers 5.24): vision tower ``model.model.vision_tower`` (CLIPVisionModel, layers
at ``.encoder.layers``), projector ``model.model.multi_modal_projector``. ``get_image_features``
returns ``pooler_output`` as a list of ``(N, D)`` projected features per image.
"""
from __future__ import annotations

import contextlib

import torch

from vtr.adapters.base import Adapter, Encoded
from vtr.signals import ClsRowsProbe, QKProbe, cls_attention, patch_attention_means
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


#: signals that need the [CLS] row of every tower layer, recorded only when a reducer declares them
LAYER_SIGNALS = frozenset({"cls_attention_layers", "cls_logits_layers"})


class TowerProbes:
    """What one CLIP tower call recorded, and the signals computed from it on demand.

    Every method returns a tensor over all tower inputs (``n`` images, crops or frames); adapters
    cut it into views. ``P`` = patches per tower input, ``L`` = encoder layers.
    """

    def __init__(self, feature: QKProbe, rows: ClsRowsProbe | None) -> None:
        self.q, self.k = feature.captured()
        self.num_heads, self.scale, self.rows = feature.num_heads, feature.scale, rows

    def __call__(self) -> torch.Tensor:
        """``(n, P)`` post-softmax [CLS] attention of the feature layer, head mean (FasterVLM)."""
        return cls_attention(self.q, self.k, self.num_heads, self.scale)

    def patch_attention_means(self, probs: bool) -> torch.Tensor:
        """``(n, 2, P)`` column and row means of the feature layer's patch-to-patch attention (FoPru)."""
        return patch_attention_means(self.q, self.k, self.num_heads, self.scale, probs=probs)

    def cls_layers(self, kind: str) -> torch.Tensor:
        """``(n, L, P)`` [CLS] row of every layer, head mean: ``kind="probs"`` or ``"logits"`` (pre-softmax)."""
        if self.rows is None:
            raise RuntimeError(
                "every layer's [CLS] attention was not recorded in this call: a reducer that reads "
                f"{' or '.join(sorted(LAYER_SIGNALS))} must declare it in its class attribute "
                "vision_signals, so the adapter probes the tower's layers before they run"
            )
        probs, logits = self.rows.captured()
        return probs if kind == "probs" else logits


def tower_signals(probes: TowerProbes, per_view) -> dict:
    """Signal providers from a tower's probes; ``per_view`` cuts an ``(n, ..., P)`` tensor into views.

    - ``"patch_attention_logit_means"`` / ``"patch_attention_prob_means"``: ``(2, n_patches)`` per view,
      see :meth:`TowerProbes.patch_attention_means`;
    - ``"cls_attention_layers"`` / ``"cls_logits_layers"``: ``(L, n_patches)`` per view, every layer's
      [CLS] attention (post-softmax) or logits (pre-softmax), head mean.
    """
    return {
        "patch_attention_logit_means": lambda: per_view(probes.patch_attention_means(probs=False)),
        "patch_attention_prob_means": lambda: per_view(probes.patch_attention_means(probs=True)),
        "cls_attention_layers": lambda: per_view(probes.cls_layers("probs")),
        "cls_logits_layers": lambda: per_view(probes.cls_layers("logits")),
    }


class ClipTowerAdapter(Adapter):
    """Shared by families whose vision tower is transformers' ``CLIPVisionModel`` with a [CLS]."""

    def run_clip_tower(self, tower, encode_fn, feature_layer, all_layers=None, **encode_kwargs):
        """Call the model's own feature function with a q/k probe on the feature layer.

        ``all_layers``: also record every layer's [CLS] row (:class:`~vtr.signals.ClsRowsProbe`); by
        default only when the patched reducer declares a signal of :data:`LAYER_SIGNALS`.
        Returns ``(outputs, probes)``; ``probes()`` yields the ``(n_images, n_patches)`` [CLS]
        attention, and ``probes`` serves the other tower signals (:class:`TowerProbes`).
        """
        layers = tower.encoder.layers
        attention = layers[feature_layer_index(feature_layer, len(layers))].self_attn
        if all_layers is None:
            all_layers = bool(LAYER_SIGNALS & self.requested_signals)
        rows = ClsRowsProbe([layer.self_attn for layer in layers], attention.num_heads, attention.scale)
        with QKProbe(attention, attention.num_heads, attention.scale) as probe:
            with rows if all_layers else contextlib.nullcontext():
                outputs = encode_fn(return_dict=True, **encode_kwargs)
        return outputs, TowerProbes(probe, rows if all_layers else None)


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
        signals = Signals(self.family, {"cls_attention": lambda: list(cls_scores()), **tower_signals(cls_scores, list)})
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
