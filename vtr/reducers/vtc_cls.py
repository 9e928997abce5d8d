"""VTC-CLS: keep the patches the [CLS] token attends to most, summed over several vision layers.

Paper: "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs", arXiv 2412.05819
(code: THU-MIG/VTC-CLS, ``clip_encoder.py::cls_token_only`` and ``llava_arch.py::encode_images``).

Algorithm (per view): for every vision layer ``l`` from ``start_layer`` to ``end_layer`` (inclusive),
take the post-softmax attention of the [CLS] query to the patch keys, averaged over heads; sum these
rows over the layers; keep the top-k patches in their original order. The reference code sums
``attentions[16:-1]``, layers 16 to 22 of the 24-layer CLIP, i.e. up to the layer LLaVA's features come
from; the defaults ``start_layer=16/24, end_layer=-2`` give exactly that on 24 layers and scale with
the tower's depth.

Layer settings: a float is a fraction of the tower's depth (rounded half up), an int a layer index
(negative counts from the last layer). A start that a fraction places after the end is moved to the
end (a 4-layer test tower then sums one layer); explicit out-of-range indices are an error.

Deviations from the reference code:
- Every layer's [CLS] row is computed in a hook from that layer's q/k projections while the tower runs
  (the reducer declares ``vision_signals``), instead of eager attention with ``output_attentions=True``
  on every layer; the values are the same (tested against eager).
- Kept tokens keep their original position ids by default; ``positions="renumber"`` reproduces the
  reference's contiguous renumbering. Batches of any size; the reference runs batch size 1.
- Families: LLaVA-1.5, LLaVA-NeXT (per AnyRes view, scores restricted to the patches that survive
  unpadding), Video-LLaVA (per image and per video frame). Qwen2-VL has no [CLS] token and its
  received-attention substitute would cost a full attention pass per block, so it is refused with an
  error that points to ``fastervlm`` (one block, adapted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtr.reducers.base import Reducer
from vtr.config import ReducerConfig, check_layer
from vtr.registry import register_reducer
from vtr.ops.selection import keep_topk_in_order
from vtr.signals import Signal
from vtr.visual import VisualTokens

SIGNAL = Signal.CLS_ATTENTION_LAYERS


def resolve_layer(value: float | int, n_layers: int, name: str) -> int:
    """A layer setting as an index in ``[0, n_layers)``."""
    if isinstance(value, float):
        return min(n_layers - 1, math.floor(value * n_layers + 0.5))
    index = value + n_layers if value < 0 else value
    if not 0 <= index < n_layers:
        raise ValueError(f"{name}={value} is out of range for a vision tower of {n_layers} layers; "
                         f"allowed: {-n_layers} to {n_layers - 1}, or a fraction of the depth in [0, 1]")
    return index


@dataclass
class VTCCLSConfig(ReducerConfig):
    """``start_layer`` / ``end_layer``: the vision layers whose [CLS] attention is summed, both included;
    a float is a fraction of the depth, an int a layer index (negative from the end)."""

    start_layer: float | int = 16 / 24
    end_layer: float | int = -2

    def validate(self) -> None:
        super().validate()
        info = self.model_info
        depth = info.vision_layers if info and info.vision_layers else None
        for name in ("start_layer", "end_layer"):
            self.normalise(name, check_layer(getattr(self, name), name, depth=depth, what="vision tower", negative=True))
        if depth is not None and not isinstance(self.start_layer, float):
            start, end = resolve_layer(self.start_layer, depth, "start_layer"), resolve_layer(self.end_layer, depth, "end_layer")
            if start > end:
                raise ValueError(f"start_layer={self.start_layer} (layer {start}) comes after end_layer={self.end_layer} "
                                 f"(layer {end}) of the {depth}-layer vision tower; it must not")


@register_reducer("vtc_cls")
class VTCCLS(Reducer):
    """[CLS] attention summed over vision layers start_layer..end_layer (default 16/24 of depth to -2), top-k."""

    config_class = VTCCLSConfig
    families = ("llava", "llava_next", "video_llava")
    family_hint = "vtc_cls needs vision [CLS] tokens; use 'fastervlm' (adapted substitute) on towers without [CLS]"
    vision_signals = (SIGNAL,)  # the adapter records every layer's [CLS] row only for reducers that ask

    def layer_range(self, n_layers: int) -> tuple[int, int]:
        """``(start, end)`` layer indices, both included."""
        start = resolve_layer(self.config.start_layer, n_layers, "start_layer")
        end = resolve_layer(self.config.end_layer, n_layers, "end_layer")
        if start > end:
            if not isinstance(self.config.start_layer, float):
                raise ValueError(f"start_layer={self.config.start_layer} (layer {start}) comes after "
                                 f"end_layer={self.config.end_layer} (layer {end}); it must not")
            start = end
        return start, end

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        if SIGNAL not in visual.signals.available:
            raise ValueError(
                f"vtc_cls needs the [CLS] attention of several vision layers, which {visual.signals.family!r} "
                "models do not have (their vision tower has no [CLS] token); use 'fastervlm' instead, which "
                "on such models uses the adapted received-attention substitute of one vision block"
            )
        plans = []
        for rows, view in zip(visual.signal(SIGNAL), visual.views):  # rows: (L, n_patches)
            start, end = self.layer_range(rows.shape[0])
            plans.append(keep_topk_in_order(rows[start:end + 1].sum(dim=0), self.budget(view)))
        return plans
