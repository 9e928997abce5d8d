"""The typed input a reducer sees: visual features with their layout, and lazily computed signals.

Reducers are written against these classes, never against a model class; adapters build them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from vtr.signals import Signal, as_signal


@dataclass(frozen=True)
class View:
    """One unit that ``keep`` applies to: an image (LLaVA-1.5), an AnyRes view, a video frame.

    Attributes:
        sample: batch row the view belongs to.
        grid: ``(h, w)`` of its patch tokens, in raster order.
        n_prefix: tokens before the patches that are always kept (a [CLS] kept as a feature).
        token_id: the placeholder token id that stands for this view's tokens in ``input_ids``.
        item: which image/video of its modality in the call this view belongs to (in view order);
            -1 when the adapter does not say.
        frame: the view's frame (Video-LLaVA) or frame group (Qwen2-VL) index inside its video;
            -1 for images and when the adapter does not say.
    """

    sample: int
    grid: tuple[int, int]
    n_prefix: int
    token_id: int
    item: int = -1
    frame: int = -1

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches


class Signals:
    """Named per-view signals, computed on first use and cached for the call.

    An adapter registers a provider per signal it can compute, e.g. ``Signal.CLS_ATTENTION`` →
    a function returning one ``(n_patches,)`` float32 tensor per view. Names are
    :class:`~vtr.signals.Signal` members (or their string values); any other name is an error.
    """

    def __init__(self, family: str, providers: dict[Signal | str, Callable[[], list[torch.Tensor]]]) -> None:
        self.family = family
        self._providers = {as_signal(name): provider for name, provider in providers.items()}
        self._cache: dict[Signal, list[torch.Tensor]] = {}

    def add(self, name: Signal | str, provider: Callable[[], list[torch.Tensor]]) -> None:
        """Register one more provider (the engine adds the signals every family shares)."""
        self._providers[as_signal(name)] = provider

    @property
    def available(self) -> list[str]:
        return sorted(s.value for s in self._providers)

    def __call__(self, name: Signal | str) -> list[torch.Tensor]:
        signal = as_signal(name)
        if signal not in self._cache:
            if signal not in self._providers:
                raise ValueError(
                    f"signal {signal.value!r} is not available for model family {self.family!r}; "
                    f"available: {', '.join(self.available) or 'none'}"
                )
            self._cache[signal] = self._providers[signal]()
        return self._cache[signal]


@dataclass(frozen=True)
class ModelAccess:
    """The model, as far as a reducer that asks it about the media (QuoTA's scorer) may use it.

    The engine builds it for every call whose adapter can show the LLM single views
    (``VisualTokens.view_inputs``); a reducer never sees the model object itself.

    Attributes:
        forward: the model's forward as it was before patching: runs the unreduced model and does
            not re-enter the patch (no second reduction, the outer call's stats untouched).
        eos_token_ids: the model's end-of-sequence ids (its generation config), for short text passes.
        name_or_path: where the model was loaded from (``""`` when unknown), to find its processor.
    """

    forward: Callable[..., Any] = field(repr=False)
    eos_token_ids: tuple[int, ...] = ()
    name_or_path: str = ""


@dataclass
class VisualTokens:
    """Everything a pre-LLM reducer needs for one call.

    Attributes:
        features: one ``(n_tokens, D)`` tensor per view: the projected features the LLM would see,
            prefix tokens first.
        views: the layout of each view, same order as ``features``.
        signals: lazily computed per-view signals (see :class:`Signals`).

    Optional, for reducers that ask the model itself about the media (QuoTA); adapters that
    support it fill them, others leave the defaults:

    Attributes:
        modality: ``"image"`` or ``"video"`` (``""`` when the adapter does not say).
        prompt_ids: per batch row, the caller's ``(N_b,)`` prompt ids with padding removed.
        model: :class:`ModelAccess`, set by the engine when ``view_inputs`` is given.
        view_inputs: ``(views, input_ids) -> kwargs``: given view indices and ``(n, L)`` ids whose
            row ``i`` holds one run of ``views[i]``'s ``n_tokens`` placeholders (``token_id``), the
            extra keyword arguments of the model's forward that put those views' features there
            (``mm_encoder_outputs``, and positions where the family needs them).
        view_pixels: lazily, per view, the ``(3, H, W)`` normalised pixels its vision tower saw
            (the first frame of a Qwen2-VL frame group).

    What a reducer reports back for the call (the engine copies both into ``model.vtr.stats``):

    Attributes:
        records: per-call records by name, e.g. QuoTA's per-video assignments (``stats.records``).
        seconds: extra wall times by name, added to ``stats.seconds``.
    """

    features: list[torch.Tensor]
    views: list[View]
    signals: Signals
    notes: list[str] = field(default_factory=list)
    modality: str = ""
    prompt_ids: list[torch.Tensor] | None = None
    model: ModelAccess | None = field(default=None, repr=False)
    view_inputs: Callable[[list[int], torch.Tensor], dict] | None = field(default=None, repr=False)
    view_pixels: Callable[[], list[torch.Tensor]] | None = field(default=None, repr=False)
    records: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def signal(self, name: Signal | str) -> list[torch.Tensor]:
        return self.signals(name)


def number_views(views: list[View], frames_per_item: list[int]) -> list[View]:
    """``views`` (item-major, ``frames_per_item[i]`` consecutive views for item ``i``) with ``item``
    and ``frame`` filled; an item with one view and ``frames_per_item`` 0 is an image (``frame=-1``)."""
    numbered, v = [], 0
    for item, n in enumerate(frames_per_item):
        for f in range(max(n, 1)):
            numbered.append(replace(views[v], item=item, frame=f if n else -1))
            v += 1
    if v != len(views):
        raise RuntimeError(f"{len(views)} views do not match {sum(max(n, 1) for n in frames_per_item)} frames")
    return numbered


def prompt_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Per row of ``(B, N)`` ids, the ``(N_b,)`` ids that are not padding (all when there is no mask)."""
    if attention_mask is None:
        return list(input_ids)
    return [row[mask.to(row.device).bool()] for row, mask in zip(input_ids, attention_mask)]
