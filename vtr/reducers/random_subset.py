"""Random baseline: keep a uniformly random subset of each view's patches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.reducers.base import Reducer
from vtr.config import ReducerConfig
from vtr.registry import register_reducer
from vtr.ops.selection import random_keep
from vtr.visual import VisualTokens


@dataclass
class RandomConfig(ReducerConfig):
    """``seed``: the draw for the j-th view of a sample uses ``seed + j``, so a sample gets the same
    tokens whatever batch it is in (batch-N equals batch-1)."""

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__} {self.seed!r}")


@register_reducer("random")
class RandomReducer(Reducer):
    """Seeded uniform random subset of patches per view (baseline), kept in original order."""

    config_class = RandomConfig

    def plan(self, visual: VisualTokens) -> list[torch.Tensor]:
        plans, view_in_sample, last_sample = [], 0, None
        for view in visual.views:
            view_in_sample = view_in_sample + 1 if view.sample == last_sample else 0
            last_sample = view.sample
            generator = torch.Generator().manual_seed(self.config.seed + view_in_sample)
            plans.append(random_keep(view.n_patches, self.budget(view), generator))
        return plans
