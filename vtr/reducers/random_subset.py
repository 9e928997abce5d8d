"""Random baseline: keep a uniformly random subset of each view's patches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.reducers.base import Reducer
from vtr.config import ReducerConfig, check_int
from vtr.registry import register_reducer
from vtr.ops.selection import random_keep
from vtr.visual import VisualTokens

MAX_SEED = 2**63 - 1


@dataclass
class RandomConfig(ReducerConfig):
    """``seed``: the draw for the j-th view of a sample uses ``seed + j``, so a sample gets the same
    tokens whatever batch it is in (batch-N equals batch-1). An int in ``[0, 2**63 - 1]``.
    Counts round half up (``keep_count``); ``keep=1.0`` or a count ≥ the view's patches keeps all."""

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        # torch generators take 64-bit seeds; view j draws with seed + j, so leave room above it
        self.normalise("seed", check_int(self.seed, "seed", low=0, high=MAX_SEED))


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
