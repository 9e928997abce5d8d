"""The shared base of families whose vision tower is transformers' ``CLIPVisionModel`` with a [CLS]
(LLaVA-1.5, LLaVA-NeXT, Video-LLaVA): one q/k probe on the feature layer, optional [CLS] rows of
every layer, optionally the last layer's keys and the projector's input, and the signals computed from them.

Module paths (transformers 5.24): encoder layers at ``tower.encoder.layers``, attention at
``layer.self_attn`` (``q_proj``/``k_proj``, ``num_heads``, ``scale``).
"""
from __future__ import annotations

import contextlib

import torch

from vtr.adapters.base import Adapter
from vtr.probes.vision import ClsRowsProbe, QKProbe, cls_attention, patch_attention_means
from vtr.signals import LAYER_SIGNALS, PRE_PROJECTOR_SIGNALS, Signal


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


class TensorProbe:
    """Holds the output (or, with ``inputs=True``, the first input) of one module's last call while registered."""

    def __init__(self, module: torch.nn.Module, inputs: bool = False) -> None:
        self.module, self.inputs, self.value, self._handle = module, inputs, None, None

    def __enter__(self) -> "TensorProbe":
        if self.inputs:
            self._handle = self.module.register_forward_pre_hook(lambda m, args: setattr(self, "value", args[0]))
        else:
            self._handle = self.module.register_forward_hook(lambda m, args, out: setattr(self, "value", out))
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None


class TowerProbes:
    """What one CLIP tower call recorded, and the signals computed from it on demand.

    Every method returns a tensor over all tower inputs (``n`` images, crops or frames); adapters
    cut it into views. ``P`` = patches per tower input, ``L`` = encoder layers.
    """

    def __init__(self, feature: QKProbe, rows: ClsRowsProbe | None, last_keys: torch.Tensor | None = None,
                 projector_input: torch.Tensor | None = None) -> None:
        self.q, self.k = feature.captured()
        self.num_heads, self.scale, self.rows = feature.num_heads, feature.scale, rows
        self.last_keys, self.projector_input = last_keys, projector_input

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
                f"{' or '.join(sorted(s.value for s in LAYER_SIGNALS))} must declare it in its class attribute "
                "vision_signals, so the adapter probes the tower's layers before they run"
            )
        probs, logits = self.rows.captured()
        return probs if kind == "probs" else logits

    def recorded(self, value: torch.Tensor | None, what: str) -> torch.Tensor:
        if value is None:
            raise RuntimeError(
                f"{what} was not recorded in this call: a reducer that reads "
                f"{' or '.join(sorted(s.value for s in PRE_PROJECTOR_SIGNALS))} must declare it in vision_signals, "
                "so the adapter probes the tower before it runs"
            )
        return value

    def tower_last_keys(self) -> torch.Tensor:
        """``(n, P, H*d)`` keys of the tower's last encoder layer at the patches ([CLS] row dropped)."""
        return self.recorded(self.last_keys, "the vision tower's last-layer keys")[:, 1:]


#: what every CLIP-tower family serves (see :func:`tower_signals`)
TOWER_SIGNALS = frozenset({Signal.CLS_ATTENTION, Signal.PATCH_ATTENTION_LOGIT_MEANS, Signal.PATCH_ATTENTION_PROB_MEANS,
                           *LAYER_SIGNALS, Signal.PROMPT_EMBEDDINGS})


def tower_signals(probes: TowerProbes, per_view) -> dict:
    """Signal providers from a tower's probes; ``per_view`` cuts an ``(n, ..., P)`` tensor into views.

    - ``"cls_attention"``: ``(n_patches,)`` per view, the feature layer's [CLS] attention;
    - ``"patch_attention_logit_means"`` / ``"patch_attention_prob_means"``: ``(2, n_patches)`` per view,
      see :meth:`TowerProbes.patch_attention_means`;
    - ``"cls_attention_layers"`` / ``"cls_logits_layers"``: ``(L, n_patches)`` per view, every layer's
      [CLS] attention (post-softmax) or logits (pre-softmax), head mean.
    """
    return {
        Signal.CLS_ATTENTION: lambda: per_view(probes()),
        Signal.PATCH_ATTENTION_LOGIT_MEANS: lambda: per_view(probes.patch_attention_means(probs=False)),
        Signal.PATCH_ATTENTION_PROB_MEANS: lambda: per_view(probes.patch_attention_means(probs=True)),
        Signal.CLS_ATTENTION_LAYERS: lambda: per_view(probes.cls_layers("probs")),
        Signal.CLS_LOGITS_LAYERS: lambda: per_view(probes.cls_layers("logits")),
    }


class ClipTowerAdapter(Adapter):
    """Shared by families whose vision tower is transformers' ``CLIPVisionModel`` with a [CLS]."""

    provides = TOWER_SIGNALS

    def run_clip_tower(self, tower, encode_fn, feature_layer, all_layers=None, projector=None, **encode_kwargs):
        """Call the model's own feature function with a q/k probe on the feature layer.

        ``all_layers``: also record every layer's [CLS] row (:class:`~vtr.probes.vision.ClsRowsProbe`); by
        default only when the patched reducer declares a signal of :data:`LAYER_SIGNALS`.
        ``projector``: the model's projector module; when the patched reducer declares a signal of
        :data:`~vtr.signals.PRE_PROJECTOR_SIGNALS`, the last encoder layer's keys and the projector's
        input are recorded too (``TowerProbes.last_keys``, ``TowerProbes.projector_input``).
        Returns ``(outputs, probes)``; ``probes()`` yields the ``(n_images, n_patches)`` [CLS]
        attention, and ``probes`` serves the other tower signals (:class:`TowerProbes`).
        """
        layers = tower.encoder.layers
        attention = layers[feature_layer_index(feature_layer, len(layers))].self_attn
        if all_layers is None:
            all_layers = bool(LAYER_SIGNALS & self.requested_signals)
        rows = ClsRowsProbe([(layer.self_attn.q_proj, layer.self_attn.k_proj) for layer in layers],
                            attention.num_heads, attention.scale)
        pre_projector = bool(PRE_PROJECTOR_SIGNALS & self.requested_signals)
        last_keys = TensorProbe(layers[-1].self_attn.k_proj)
        inputs = TensorProbe(projector, inputs=True) if projector is not None else contextlib.nullcontext()
        with QKProbe(attention.q_proj, attention.k_proj, attention.num_heads, attention.scale) as probe:
            with rows if all_layers else contextlib.nullcontext():
                with last_keys if pre_projector else contextlib.nullcontext():
                    with inputs if pre_projector else contextlib.nullcontext():
                        outputs = encode_fn(return_dict=True, **encode_kwargs)
        return outputs, TowerProbes(probe, rows if all_layers else None, last_keys.value,
                                    getattr(inputs, "value", None))
