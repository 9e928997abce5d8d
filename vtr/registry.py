"""Reducer registry and configuration dataclasses.

A reducer is a class with a ``config_class`` (a :class:`ReducerConfig` subclass) and a ``plan``
method; :func:`register_reducer` makes it available to :func:`vtr.patch` under a name. Configs
validate themselves on construction *and* on every later assignment, so
``model.vtr.config.keep = 2.0`` fails at the line that wrote it, not at the next ``generate``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

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


@dataclass(frozen=True)
class ReducerSpec:
    name: str
    reducer_class: type
    config_class: type
    description: str


_REGISTRY: dict[str, ReducerSpec] = {}


def register_reducer(name: str, description: str | None = None) -> Callable[[type], type]:
    """Class decorator that registers a reducer under ``name``.

    The class needs a ``config_class`` attribute (a :class:`ReducerConfig` subclass) and a
    ``plan(visual) -> list[torch.Tensor]`` method; see :class:`vtr.reducers.base.Reducer`.
    ``description`` defaults to the first line of the class docstring.
    """

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].reducer_class is not cls:
            raise ValueError(f"a reducer named {name!r} is already registered ({_REGISTRY[name].reducer_class})")
        config_class = getattr(cls, "config_class", ReducerConfig)
        if not (isinstance(config_class, type) and issubclass(config_class, ReducerConfig)):
            raise TypeError(f"{cls.__name__}.config_class must subclass vtr.ReducerConfig")
        text = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        cls.name = name
        _REGISTRY[name] = ReducerSpec(name, cls, config_class, text)
        return cls

    return decorate


def unregister_reducer(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_spec(name: str) -> ReducerSpec:
    if not isinstance(name, str):
        raise TypeError(f"reducer must be a registered name or a ReducerConfig, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown reducer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def spec_for_config(config: ReducerConfig) -> ReducerSpec:
    matches = [s for s in _REGISTRY.values() if type(config) is s.config_class]
    if len(matches) != 1:
        raise ValueError(
            f"{type(config).__name__} is not the config of exactly one registered reducer; "
            f"pass the reducer name instead, one of: {', '.join(sorted(_REGISTRY))}"
        )
    return matches[0]


def list_reducers() -> dict[str, str]:
    """Registered reducer names with their one-line descriptions, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def make_config(reducer: str | ReducerConfig, overrides: dict[str, Any]) -> tuple[ReducerSpec, ReducerConfig]:
    """Resolve ``reducer`` (name or config object) plus keyword overrides into a validated config."""
    if isinstance(reducer, ReducerConfig):
        spec = spec_for_config(reducer)
        base = dataclasses.asdict(reducer)
    else:
        spec = get_spec(reducer)
        base = {}
    allowed = field_names(spec.config_class)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown setting(s) {', '.join(map(repr, unknown))} for reducer {spec.name!r}; allowed: {', '.join(allowed)}"
        )
    return spec, spec.config_class(**{**base, **overrides})
