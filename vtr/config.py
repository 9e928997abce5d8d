"""Reducer settings: :class:`ReducerConfig`, the base of every reducer's config dataclass, and the
validators configs share.

Configs validate themselves on construction *and* on every later assignment, so
``model.vtr.config.keep = 2.0`` fails at the line that wrote it, not at the next ``generate``; a
rejected value leaves the config as it was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POSITION_MODES = ("original", "renumber")


@dataclass
class ReducerConfig:
    """Settings shared by every reducer.

    Attributes:
        keep: visual tokens kept **per view** (per image for LLaVA-1.5; per view or per frame in
            adapters that have them). A float in (0, 1] is a ratio of the view's tokens
            (rounded half up, at least 1); an int >= 1 is a count (capped at the view's size).
        positions: ``"original"`` (default) keeps each kept token's position id from the
            unreduced prompt, so text after the image keeps its place too; ``"renumber"``
            gives the reduced sequence contiguous positions, as the original LLaVA code does.
    """

    keep: float | int = 0.1
    positions: str = "original"

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_frozen_fields", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if not getattr(self, "_frozen_fields", False):
            object.__setattr__(self, name, value)
            return
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise AttributeError(
                f"{type(self).__name__} has no setting {name!r}; allowed: {', '.join(field_names(type(self)))}"
            )
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            self.validate()
        except (TypeError, ValueError):
            object.__setattr__(self, name, old)  # a rejected value leaves the config as it was
            raise

    def validate(self) -> None:
        """Raise ``TypeError``/``ValueError`` naming the bad setting. Subclasses extend this."""
        check_keep(self.keep)
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")


def check_keep(keep: Any, name: str = "keep") -> None:
    """Validate a keep value: float ratio in (0, 1] or int count >= 1 (bools are rejected)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(
            f"{name} must be a float ratio in (0, 1] or an int count >= 1, got {type(keep).__name__} {keep!r}"
        )
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise ValueError(f"{name} as a ratio must be in (0, 1], got {keep!r}; pass an int for a token count")
    if isinstance(keep, int) and keep < 1:
        raise ValueError(f"{name} as a token count must be >= 1, got {keep!r}")


def field_names(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]
