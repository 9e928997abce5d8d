"""What QuoTA did in a model's last patched call, per video: ``vtr.reducers.quota.assignments(model)``."""
from __future__ import annotations

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


#: the key of QuoTA's records in ``model.vtr.stats.records``
RECORD = "quota"


def assignments(model: torch.nn.Module) -> list[Assignment]:
    """The :class:`Assignment` of each video in ``model``'s last patched call (``[]`` before the first
    call, after a call that ran no QuoTA, and once the model is unpatched)."""
    handle = model.__dict__.get("vtr")
    stats = getattr(handle, "stats", None)
    return list(stats.records.get(RECORD, [])) if stats is not None else []
