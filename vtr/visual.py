"""The typed input a reducer sees: visual features with their layout, and lazily computed signals.

Reducers are written against these classes, never against a model class; adapters build them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class View:
    """One unit that ``keep`` applies to: an image (LLaVA-1.5), an AnyRes view, a video frame.

    Attributes:
        sample: batch row the view belongs to.
        grid: ``(h, w)`` of its patch tokens, in raster order.
        n_prefix: tokens before the patches that are always kept (a [CLS] kept as a feature).
        token_id: the placeholder token id that stands for this view's tokens in ``input_ids``.
    """

    sample: int
    grid: tuple[int, int]
    n_prefix: int
    token_id: int

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches


class Signals:
    """Named per-view signals, computed on first use and cached for the call.

    An adapter registers a provider per signal it can compute, e.g. ``"cls_attention"`` →
    a function returning one ``(n_patches,)`` float32 tensor per view.
    """

    def __init__(self, family: str, providers: dict[str, Callable[[], list[torch.Tensor]]]) -> None:
        self.family = family
        self._providers = providers
        self._cache: dict[str, list[torch.Tensor]] = {}

    @property
    def available(self) -> list[str]:
        return sorted(self._providers)

    def __call__(self, name: str) -> list[torch.Tensor]:
        if name not in self._cache:
            if name not in self._providers:
                raise ValueError(
                    f"signal {name!r} is not available for model family {self.family!r}; "
                    f"available: {', '.join(self.available) or 'none'}"
                )
            self._cache[name] = self._providers[name]()
        return self._cache[name]


@dataclass
class VisualTokens:
    """Everything a pre-LLM reducer needs for one call.

    Attributes:
        features: one ``(n_tokens, D)`` tensor per view: the projected features the LLM would see,
            prefix tokens first.
        views: the layout of each view, same order as ``features``.
        signals: lazily computed per-view signals (see :class:`Signals`).
    """

    features: list[torch.Tensor]
    views: list[View]
    signals: Signals
    notes: list[str] = field(default_factory=list)

    def signal(self, name: str) -> list[torch.Tensor]:
        return self.signals(name)
