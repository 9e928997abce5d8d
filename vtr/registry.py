"""The reducer registry.

A reducer is a class with a ``config_class`` (a :class:`~vtr.config.ReducerConfig` subclass) and a
``plan`` method; :func:`register_reducer` makes it available to :func:`vtr.patch` under a name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from vtr.config import ReducerConfig, field_names


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
        # field by field, not dataclasses.asdict: that deep-copies, duplicating a processor or a scorer
        # holding a model; the caller's objects are kept by reference
        base = {f.name: getattr(reducer, f.name) for f in dataclasses.fields(reducer)}
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
