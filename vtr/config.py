"""Reducer settings: :class:`ReducerConfig`, the base of every reducer's config dataclass, and the
validators configs share.

Configs validate themselves on construction *and* on every later assignment, so
``model.vtr.config.keep = 2.0`` fails at the line that wrote it, not at the next ``generate``; a
rejected value leaves the config as it was. Once :func:`vtr.patch` has bound a config to a model
(:meth:`ReducerConfig.bind` with a :class:`ModelInfo`), the checks that need the model (layer indices
against its depth, position modes its family supports) run at every assignment too.

Every config uses the validators below, so the same kind of setting gets the same rules and the
same message everywhere: bools are refused where numbers are meant, numpy scalars of the right
kind are accepted (and stored as Python numbers), NaN and infinities are refused, and each error
names the setting, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

POSITION_MODES = ("original", "renumber")


@dataclass(frozen=True)
class ModelInfo:
    """What settings are checked against once a config is bound to a model (:meth:`ReducerConfig.bind`).

    Attributes:
        family: the adapter family (``"llava"``, ...).
        llm_layers: decoder layers of the language model.
        vision_layers: layers of the vision tower (0 when unknown).
        position_modes: the ``positions`` values the family supports.
    """

    family: str
    llm_layers: int
    vision_layers: int = 0
    position_modes: tuple[str, ...] = POSITION_MODES


# -- shared validators -------------------------------------------------------------------------------
# Each returns the value normalised to a plain Python type (numpy scalars become int/float).

def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool scalar


def is_integer(value: Any) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not is_bool(value)


def is_real(value: Any) -> bool:
    """An int, float or numpy number of either kind, not a bool."""
    return isinstance(value, numbers.Real) and not is_bool(value)


def check_bool(value: Any, name: str) -> bool:
    if not is_bool(value):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "finite"


def _check_range(number, name: str, what: str, low, high, low_open: bool, high_open: bool):
    bad = ((low is not None and (number < low or (low_open and number == low)))
           or (high is not None and (number > high or (high_open and number == high))))
    if bad:
        raise ValueError(f"{name} must be {what} {_range_text(low, high, low_open, high_open)}, got {number!r}")
    return number


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """An int (or numpy integer) in ``[low, high]``; bools and floats are refused."""
    if not is_integer(value):
        raise TypeError(f"{name} must be an int{' ' + _range_text(low, high, False, False) if low is not None or high is not None else ''}, "
                        f"got {_describe(value)}")
    return _check_range(int(value), name, "an int", low, high, False, False)


def check_float(value: Any, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (int, float or numpy scalar; not a bool) in the given range, as a float."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number {_range_text(low, high, low_open, high_open)}, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number {_range_text(low, high, low_open, high_open)}, got {value!r}")
    return _check_range(number, name, "a number", low, high, low_open, high_open)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_keep(keep: Any, name: str = "keep", counts: bool = True) -> float | int:
    """A keep value: a float ratio in (0, 1], or (with ``counts``) an int count >= 1.

    numpy floats are ratios and numpy ints counts; bools, NaN and infinities are refused.
    """
    allowed = "a float ratio in (0, 1] or an int count >= 1" if counts else "a float ratio in (0, 1]"
    if is_integer(keep):
        if not counts:
            raise TypeError(f"{name} must be {allowed}, got {_describe(keep)}")
        if keep < 1:
            raise ValueError(f"{name} as a token count must be >= 1, got {keep!r}")
        return int(keep)
    if not is_real(keep):
        raise TypeError(f"{name} must be {allowed}, got {_describe(keep)}")
    ratio = float(keep)
    if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        hint = "; pass an int for a token count" if counts else ""
        raise ValueError(f"{name} as a ratio must be in (0, 1], got {keep!r}{hint}")
    return ratio


def check_layer(value: Any, name: str, *, depth: int | None = None, what: str = "LLM", low: int = 0,
                high: int | None = None, negative: bool = False, fractions: bool = True) -> float | int:
    """A layer setting: a float is a fraction of the depth in [0, 1], an int a layer index.

    With ``depth`` known (a bound config), an int must lie in ``[low, high]`` (``high`` defaults to
    ``depth - 1``); ``negative`` allows ``-depth .. -1``, counted from the last layer. ``fractions``:
    whether the messages offer fractions (callers that take ints only check the type first).
    """
    index_text = "an int layer index" + (" (negative counts from the last layer)" if negative else "")
    if is_integer(value):
        index = int(value)
        if depth is None:
            if index < low and not (negative and index < 0):
                raise ValueError(f"{name} must be a fraction of the {what} depth in [0, 1] or {index_text} >= {low}, got {index}")
            return index
        top = depth - 1 if high is None else high
        lowest = -depth if negative else low
        resolved = index + depth if index < 0 and negative else index
        if not (lowest <= index and low <= resolved <= top):
            allowed = f"{low}..{top}" + (f" or {-depth}..-1" if negative else "")
            raise ValueError(f"{name}={index} is out of range for a {what} of {depth} layers; allowed: {allowed}"
                             + (", or a fraction of the depth in [0, 1]" if fractions else ""))
        return index
    if not is_real(value):
        raise TypeError(f"{name} must be a fraction of the {what} depth in [0, 1] or {index_text}, got {_describe(value)}")
    fraction = float(value)
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"{name} as a fraction of the {what} depth must be in [0, 1], got {value!r}; pass an int for a layer index")
    return fraction


def check_sequence(value: Any, name: str, check: Callable[[Any, str], Any], length: int | None = None) -> tuple:
    """A tuple or list whose every entry passes ``check(entry, f"{name}[i]")``; returned as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple or list{f' of {length} entries' if length else ''}, got {_describe(value)}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} needs {length} entries, got {len(value)}: {tuple(value)!r}")
    if not value:
        raise ValueError(f"{name} needs at least one entry, got {value!r}")
    return tuple(check(entry, f"{name}[{i}]") for i, entry in enumerate(value))


def resolve_layer(value: float | int, depth: int) -> int:
    """A checked layer setting as an index: a fraction times the depth, rounded half up; negative
    ints count from the last layer."""
    if isinstance(value, float):
        return math.floor(value * depth + 0.5)
    return value + depth if value < 0 else value


@dataclass
class ReducerConfig:
    """Settings shared by every reducer.

    Attributes:
        keep: visual tokens kept **per view** (per image for LLaVA-1.5; per view or per frame in
            adapters that have them). A float in (0, 1] is a ratio of the view's tokens
            (rounded half up, at least 1); an int >= 1 is a count (capped at the view's size).
            ``keep=1.0``, or a count at least the view's size, is the identity for every reducer.
        positions: ``"original"`` (default) keeps each kept token's position id from the
            unreduced prompt, so text after the image keeps its place too; ``"renumber"``
            gives the reduced sequence contiguous positions, as the original LLaVA code does.
    """

    keep: float | int = 0.1
    positions: str = "original"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_model_info", None)
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
        saved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        object.__setattr__(self, name, value)
        try:
            self.validate()
        except (TypeError, ValueError):
            for key, old in saved.items():  # a rejected value leaves the config as it was
                object.__setattr__(self, key, old)
            raise

    @property
    def model_info(self) -> ModelInfo | None:
        """The model this config is bound to (set by :func:`vtr.patch`), or ``None``."""
        return getattr(self, "_model_info", None)

    def bind(self, info: ModelInfo | None) -> None:
        """Check the settings against ``info`` and keep it, so later edits are checked against it too.

        Raises like :meth:`validate`; on error the config stays unbound and unchanged.
        """
        old = self.model_info
        object.__setattr__(self, "_model_info", info)
        try:
            self.validate()
        except (TypeError, ValueError):
            object.__setattr__(self, "_model_info", old)
            raise

    def normalise(self, name: str, value: Any) -> None:
        """Store a validator's normalised value (e.g. a numpy scalar as a Python number)."""
        object.__setattr__(self, name, value)

    def validate(self) -> None:
        """Raise ``TypeError``/``ValueError`` naming the bad setting. Subclasses extend this."""
        self.normalise("keep", check_keep(self.keep))
        check_choice(self.positions, "positions", POSITION_MODES)
        info = self.model_info
        if info is not None and self.positions not in info.position_modes:
            raise ValueError(f"positions={self.positions!r} is not supported for {info.family!r} models; "
                             f"allowed: {', '.join(info.position_modes)}")


def field_names(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]


def model_info(adapter) -> ModelInfo:
    """The :class:`ModelInfo` of a model adapter: its family, decoder and vision depth, position modes."""
    vision = getattr(adapter.model.config, "vision_config", None)
    vision_layers = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", None) or 0
    return ModelInfo(adapter.family, int(adapter.text_config.num_hidden_layers), int(vision_layers),
                     tuple(adapter.position_modes))
