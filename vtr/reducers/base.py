"""The reducer interface."""
from __future__ import annotations

import torch

from vtr.registry import ReducerConfig
from vtr.select import keep_count
from vtr.visual import View, VisualTokens


class Reducer:
    """Base class of every reducer.

    Subclasses set ``config_class`` and implement :meth:`plan`. A reducer never looks at a model
    class: it gets :class:`~vtr.visual.VisualTokens` (features, layout, lazy signals) from the
    adapter and returns which patch tokens of each view to keep.
    """

    config_class: type[ReducerConfig] = ReducerConfig
    name: str = "?"  # set by @register_reducer

    def __init__(self, config: ReducerConfig) -> None:
        self.config = config

    def budget(self, view: View) -> int:
        """Patch tokens to keep in ``view`` under ``config.keep``."""
        return keep_count(self.config.keep, view.n_patches)

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        """Return, per view, the sorted int64 indices of the patch tokens to keep (``(k_v,)``).

        Indices count patches only (0 = the first patch after any prefix); prefix tokens such as a
        [CLS] feature are always kept by the engine.
        """
        raise NotImplementedError
