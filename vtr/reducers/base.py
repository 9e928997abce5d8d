"""The reducer interface."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.config import ReducerConfig
from vtr.ops.selection import keep_count
from vtr.signals import Signal
from vtr.visual import View, VisualTokens


@dataclass
class MergedView:
    """A pre-LLM plan element that replaces features instead of only selecting them.

    Attributes:
        index: ``(k,)`` sorted patch indices whose slots (and, with original positions, position
            ids) the merged tokens take.
        features: ``(k, D)`` the features placed in those slots, in that order.
        pre_projector: the features lie in the tower's space (``Signal.PRE_PROJECTOR_FEATURES``), not the
            LLM's: the engine maps them through the model's projector (``Adapter.project_features``) first.
        sizes: ``(k,)`` how many patches each merged token stands for, or None. When given, each token's
            attention logit as a key gets ``log size`` in every decoder layer (proportional attention,
            :mod:`vtr.engine.proportional`), so it draws the attention mass of the patches it replaces.
    """

    index: torch.Tensor
    features: torch.Tensor
    pre_projector: bool = False
    sizes: torch.Tensor | None = None


class Reducer:
    """Base class of every reducer.

    A reducer has up to two stages, and never looks at a model class:

    - before the LLM: :meth:`plan` gets :class:`~vtr.visual.VisualTokens` (features, layout, lazy
      signals) from the adapter and returns which patch tokens of each view to keep;
    - inside the LLM: :meth:`llm_layers` names the decoder layers before which tokens are dropped,
      and :meth:`llm_select` gets a :class:`~vtr.engine.decoder_pruning.LayerContext` (exact attention of
      the previous layer, which entries are visual/text) and returns the visual entries to keep.

    Subclasses set ``config_class`` and override the stage(s) they have.
    """

    config_class: type[ReducerConfig] = ReducerConfig
    name: str = "?"  # set by @register_reducer
    #: signals whose probes must be set up before the vision tower runs (e.g. every layer's [CLS]
    #: row); the cheap ones (the feature layer's q/k) are always available lazily
    vision_signals: tuple[Signal, ...] = ()
    #: every signal :meth:`plan` reads (checked against the adapter's ``provides`` at patch time);
    #: override :meth:`signals_read` when it depends on the config
    reads: tuple[Signal, ...] = ()
    #: families the reducer works on; ``None`` for all (checked at patch time)
    families: tuple[str, ...] | None = None
    #: what to use instead, said when a family is refused
    family_hint: str = ""

    def __init__(self, config: ReducerConfig) -> None:
        self.config = config

    def budget(self, view: View) -> int:
        """Patch tokens to keep in ``view`` under ``config.keep``."""
        return keep_count(self.config.keep, view.n_patches)

    def llm_depth(self, needs: str) -> int:
        """The LLM's decoder depth from the bound model info; ``needs``: what the reducer derives from it (the
        error's subject when the config is not bound to a model)."""
        info = self.config.model_info
        if info is None:
            raise ValueError(f"{needs} from the LLM's depth; patch a model with vtr.patch "
                             "(or bind the config: config.bind(vtr.config.ModelInfo(...)))")
        return info.llm_layers

    def signals_read(self) -> frozenset[Signal]:
        """The signals this reducer, with its current config, reads from the adapter."""
        return frozenset(self.reads) | frozenset(self.vision_signals)

    @classmethod
    def has_pre_llm_stage(cls) -> bool:
        return cls.plan is not Reducer.plan

    def llm_layers(self, n_layers: int) -> list[int]:
        """Decoder layers (1 ≤ K < n_layers) before which visual tokens are dropped; none by default."""
        return []

    def llm_select(self, context) -> list[torch.Tensor]:
        """Per batch row, the sorted positions (into the current sequence) of the visual tokens to keep."""
        raise NotImplementedError

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        """Return, per view, the sorted int64 indices of the patch tokens to keep (``(k_v,)``), or a
        :class:`MergedView` when the kept tokens carry new (merged) features.

        Indices count patches only (0 = the first patch after any prefix); prefix tokens such as a
        [CLS] feature are always kept by the engine.
        """
        raise NotImplementedError
