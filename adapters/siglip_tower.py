"""The shared part of families whose vision tower is transformers' ``SiglipVisionModel`` (no [CLS]): LLaVA-OneVision,
Gemma 3. One q/k probe on the feature layer; the **adapted** signals computed from it, laid out like the features.

SigLIP has no [CLS], so ``cls_attention`` is served by the attention each patch *receives* at the feature layer
(``received_attention``: column mean of the head-mean post-softmax patch attention, recomputed from the layer's
q/k), and FoPru's ``patch_attention_*_means`` are that layer's column and row means with no prefix to exclude.
The family's adapter hands a ``layout`` that maps the per-tower-input maps onto its views exactly as the model
maps the features (its packer, its pooling); the notes in ``stats.notes`` say so.

Module paths (transformers 5.24): encoder layers at ``tower.encoder.layers``, attention at ``layer.self_attn``
(``q_proj``/``k_proj``, ``num_heads``, ``scale``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from vtr.adapters.clip_tower import feature_layer_index
from vtr.probes.vision import QKProbe, patch_attention_means
from vtr.signals import Signal
from vtr.visual import Signals, View, VisualTokens

#: what a SigLIP family serves
SIGLIP_SIGNALS = frozenset({Signal.CLS_ATTENTION, Signal.RECEIVED_ATTENTION, Signal.PATCH_ATTENTION_LOGIT_MEANS,
                            Signal.PATCH_ATTENTION_PROB_MEANS, Signal.PROMPT_EMBEDDINGS})

SUBSTITUTE_NOTE = (
    "cls_attention on {family} is the adapted received-attention substitute (SigLIP has no [CLS]): attention "
    "each patch receives at the feature layer (column mean, head mean), laid out like the features ({layout})"
)
PATCH_ATTENTION_NOTE = (
    "patch_attention_*_means on {family} (FoPru's significance) is adapted: SigLIP has no [CLS] to exclude; "
    "column/row means of the feature layer's patch attention, laid out like the features ({layout})"
)


class SiglipProbe:
    """The feature layer's captured q/k ``(n, P, H·d)`` and the per-tower-input scores computed from them."""

    def __init__(self, probe: QKProbe, attention) -> None:
        self.q, self.k = probe.captured()
        self.attention = attention
        self._scores: dict[Signal, torch.Tensor] = {}

    def scores(self, signal: Signal) -> torch.Tensor:
        """``(n, C, P)`` float32: C = 1 for the received attention, 2 (column, row) for the FoPru means."""
        if not self._scores:
            heads, scale = self.attention.num_heads, self.attention.scale
            logits = patch_attention_means(self.q, self.k, heads, scale, probs=False, n_prefix=0)
            probs = patch_attention_means(self.q, self.k, heads, scale, probs=True, n_prefix=0)
            self._scores = {Signal.CLS_ATTENTION: probs[:, :1], Signal.PATCH_ATTENTION_LOGIT_MEANS: logits,
                            Signal.PATCH_ATTENTION_PROB_MEANS: probs}
        return self._scores[signal]


@contextlib.contextmanager
def probe_feature_layer(tower, vision_feature_layer: int) -> Iterator[list]:
    """While inside, the q/k of ``tower``'s feature layer are captured; the list yielded holds the
    :class:`SiglipProbe` afterwards."""
    layers = tower.encoder.layers
    attention = layers[feature_layer_index(vision_feature_layer, len(layers))].self_attn
    result: list[SiglipProbe] = []
    with QKProbe(attention.q_proj, attention.k_proj, attention.num_heads, attention.scale) as probe:
        yield result
    result.append(SiglipProbe(probe, attention))


def siglip_tokens(family: str, layout_note: str, features: list[torch.Tensor], views: list[View],
                  probe: SiglipProbe, layout: Callable[[torch.Tensor], list[torch.Tensor]]) -> VisualTokens:
    """:class:`VisualTokens` whose signals are the feature layer's scores laid out by ``layout``
    (``(n, C, P)`` per tower input → one ``(C, n_patches)`` per view)."""

    def provider(signal: Signal, template: str):
        note = template.format(family=family, layout=layout_note)

        def provide() -> list[torch.Tensor]:
            if note not in tokens.notes:
                tokens.notes.append(note)
            laid = layout(probe.scores(signal))
            return [s[0] for s in laid] if signal is Signal.CLS_ATTENTION else laid
        return provide

    received = provider(Signal.CLS_ATTENTION, SUBSTITUTE_NOTE)
    providers = {Signal.CLS_ATTENTION: received, Signal.RECEIVED_ATTENTION: received,
                 **{s: provider(s, PATCH_ATTENTION_NOTE)
                    for s in (Signal.PATCH_ATTENTION_LOGIT_MEANS, Signal.PATCH_ATTENTION_PROB_MEANS)}}
    tokens = VisualTokens(features, views, Signals(family, providers))
    return tokens
