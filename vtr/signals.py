"""The names of the per-view signals adapters compute and reducers read, declared once.

A reducer names the signals it reads (``Reducer.reads``); :func:`vtr.patch` checks them against the
signals the model's adapter provides (``Adapter.provides``) before anything is patched, and
:class:`~vtr.visual.Signals` refuses a provider or a request under any other name. ``Signal`` is a
``str`` enum, so ``visual.signal("cls_attention")`` and ``visual.signal(Signal.CLS_ATTENTION)`` are
the same request.
"""
from __future__ import annotations

from enum import Enum


class Signal(str, Enum):
    """A per-view signal; each value's comment gives what one view's tensor holds."""

    #: ``(n_patches,)`` [CLS]→patch attention of the feature layer, post-softmax, head mean
    #: (Qwen2-VL, no [CLS]: the adapted received-attention substitute)
    CLS_ATTENTION = "cls_attention"
    #: ``(n_patches,)`` attention each merged token receives in the last vision block (Qwen2-VL)
    RECEIVED_ATTENTION = "received_attention"
    #: ``(2, n_patches)`` column and row means of the feature layer's patch-to-patch attention logits
    PATCH_ATTENTION_LOGIT_MEANS = "patch_attention_logit_means"
    #: ``(2, n_patches)`` the same, of the post-softmax probabilities
    PATCH_ATTENTION_PROB_MEANS = "patch_attention_prob_means"
    #: ``(L, n_patches)`` [CLS] row of every vision layer, post-softmax, head mean (costly: declared in
    #: ``Reducer.vision_signals`` so the tower is probed before it runs)
    CLS_ATTENTION_LAYERS = "cls_attention_layers"
    #: ``(L, n_patches)`` the same, pre-softmax logits
    CLS_LOGITS_LAYERS = "cls_logits_layers"
    #: ``(9,)`` int64 per view: ``[image, crop_row, crop_col, grid_rows, grid_cols, row0, col0, rows, cols]``,
    #: its place in its image's AnyRes layout (LLaVA-NeXT; see ``LlavaNextAdapter.anyres_layout``)
    ANYRES_LAYOUT = "anyres_layout"
    #: ``(T, D)`` float32 per view: the LLM's input embeddings of the text tokens after the last visual
    #: placeholder of the view's prompt row (the instruction; all of the row's text when none follow),
    #: padding excluded; same space as the projected features (CDPruner's relevance)
    PROMPT_EMBEDDINGS = "prompt_embeddings"
    #: ``(n_patches, H*d)`` per view: the key projections (``k_proj`` output, all heads side by side) of the
    #: vision tower's *last* encoder layer at the view's patches, [CLS] row dropped, in the tower's dtype
    #: (AIM's LLaVA-1.5 merge metric; declared in ``Reducer.vision_signals`` so the layer is probed)
    TOWER_LAST_KEYS = "tower_last_keys"
    #: ``(n_tokens, D_vision)`` per view: the tower features the projector maps to the view's ``features``
    #: (prefix rows first), before the projector; a family that provides it also maps features of that
    #: space through its projector (``Adapter.project_features``), so a reducer may merge them there
    #: (declared in ``Reducer.vision_signals`` so the projector's input is recorded)
    PRE_PROJECTOR_FEATURES = "pre_projector_features"

    def __str__(self) -> str:
        return self.value


#: signals that need every vision layer probed while the tower runs
LAYER_SIGNALS = frozenset({Signal.CLS_ATTENTION_LAYERS, Signal.CLS_LOGITS_LAYERS})

#: signals recorded only for a reducer that declares them: the last tower layer's keys, the projector's input
PRE_PROJECTOR_SIGNALS = frozenset({Signal.TOWER_LAST_KEYS, Signal.PRE_PROJECTOR_FEATURES})


def as_signal(name: str | Signal) -> Signal:
    """``name`` as a :class:`Signal`; ``ValueError`` listing the declared names for anything else."""
    try:
        return Signal(name)
    except ValueError:
        raise ValueError(
            f"unknown signal {str(name)!r}; declared signals: {', '.join(s.value for s in Signal)}"
        ) from None
