"""What QuoTA did in a model's last patched call, per video: ``vtr.quota.assignments(model)``."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class Assignment:
    """One video's token assignment.

    Attributes:
        sample: batch row of the video; ``item``: which video of the call (in prompt order).
        question: the question its frames were scored against (``""`` when nothing was scored).
        objects: the objects query decoupling found (``[]``: scored against the question).
        scores: ``(T,)`` frame scores, ``None`` when the budget covered every token (nothing to assign).
        weights: ``(T,)`` normalised frame weights ``(scale·p)^exponent / Σ``, or ``None``.
        budget: the video's patch-token budget (``keep`` applied per frame, summed; prefix tokens
            such as Video-LLaVA's frame [CLS] come on top).
        counts: patch tokens each frame kept, in time order (``Σ counts == budget``).
    """

    sample: int
    item: int
    question: str
    objects: list[str]
    scores: torch.Tensor | None
    weights: torch.Tensor | None
    budget: int
    counts: list[int] = field(default_factory=list)


_LAST: "weakref.WeakKeyDictionary[torch.nn.Module, list[Assignment]]" = weakref.WeakKeyDictionary()


def record(model, assignments: list[Assignment]) -> None:
    if model is not None:
        _LAST[model] = assignments


def assignments(model: torch.nn.Module) -> list[Assignment]:
    """The :class:`Assignment` of each video in ``model``'s last QuoTA call (``[]`` before the first)."""
    return list(_LAST.get(model, []))
