"""``patch`` / ``unpatch`` / ``patched`` and the ``model.vtr`` handle.

Patching is instance-level only: ``forward`` and ``generate`` are replaced by wrappers stored in
the instance's ``__dict__`` (never on a transformers class), and ``unpatch`` puts back exactly what
was there, so an unpatched model is bitwise the model that was patched.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

import torch

from vtr import reducers  # noqa: F401  (registers the built-in reducers)
from vtr.adapters import adapter_for
from vtr.engine.in_llm import llm_stage, loss_on_kept, record_llm_stage
from vtr.engine.pre_llm import check_positions, check_signals, reduce_call
from vtr.config import ReducerConfig, model_info
from vtr.registry import make_config
from vtr.stats import ReductionStats

_MISSING = object()
_WRAPPED = ("forward", "generate")


class VTRHandle:
    """The handle at ``model.vtr`` of a patched model.

    Attributes:
        reducer: the reducer's registered name.
        config: the live config; edits (``model.vtr.config.keep = 0.25``) are validated at once and
            apply from the next call.
        stats: :class:`~vtr.stats.ReductionStats` of the last call (``None`` before the first).
        family: the adapter family (``"llava"``, ...).
    """

    def __init__(self, model: torch.nn.Module, adapter, spec, config: ReducerConfig) -> None:
        self._model = model
        self.adapter = adapter
        self.spec = spec
        self.config = config
        self.stats: ReductionStats | None = None
        self._saved: dict[str, Any] = {}
        self._in_generate = False

    @property
    def reducer(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def family(self) -> str:
        return self.adapter.family

    def __repr__(self) -> str:
        return f"VTRHandle(reducer={self.reducer!r}, family={self.family!r}, config={self.config})"

    @property
    def model(self) -> torch.nn.Module:
        """The patched model this handle belongs to."""
        return self._model

    def unpatch(self) -> torch.nn.Module:
        return unpatch(self._model)

    @property
    def original_forward(self):
        """The model's forward as it was before patching: runs without any reduction (for reducers
        that consult the model itself, such as QuoTA's scorer, without re-entering the patch)."""
        return self._original_forward

    # -- installation ---------------------------------------------------------------------------
    def _install(self) -> None:
        model = self._model
        for name in _WRAPPED:
            self._saved[name] = model.__dict__.get(name, _MISSING)
        original_forward, original_generate = model.forward, model.generate
        self._original_forward = original_forward

        @functools.wraps(original_forward)  # generate inspects forward's signature
        def forward(*args, **kwargs):
            if self._in_generate:  # generate's own prefill/decode steps: already reduced
                return original_forward(*args, **kwargs)
            call = bind_arguments(original_forward, args, kwargs)
            reduced = reduce_call(self, call, for_generate=False)
            with llm_stage(self, reduced) as engine:
                labels = reduced.pop("labels", None) if engine is not None else None
                output = original_forward(**reduced)
            record_llm_stage(self.stats, engine, self.adapter.text_config)
            if labels is not None:  # logits cover the kept rows only; align the labels with them
                output.loss = loss_on_kept(model, output.logits, labels, engine)
            return output

        @functools.wraps(original_generate)
        def generate(*args, **kwargs):
            call = bind_arguments(original_generate, args, kwargs)
            if call.get("inputs") is not None and call.get("input_ids") is None:
                call["input_ids"] = call.pop("inputs")
            prompt = call.get("input_ids")
            with torch.no_grad():
                reduced = reduce_call(self, call, for_generate=True)
            self._in_generate = True
            try:
                with llm_stage(self, reduced) as engine:
                    output = original_generate(**reduced)
            finally:
                self._in_generate = False
            record_llm_stage(self.stats, engine, self.adapter.text_config)
            return with_caller_prompt(output, prompt, reduced.get("input_ids"))

        model.forward, model.generate = forward, generate
        model.vtr = self

    def _uninstall(self) -> None:
        model = self._model
        for name in _WRAPPED:
            saved = self._saved.get(name, _MISSING)
            if saved is _MISSING:
                model.__dict__.pop(name, None)
            else:
                model.__dict__[name] = saved
        model.__dict__.pop("vtr", None)


def bind_arguments(fn, args: tuple, kwargs: dict) -> dict:
    """Positional and keyword arguments of a call to ``fn`` as one flat keyword dict."""
    if not args:
        return dict(kwargs)
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    flat = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(fn).parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            flat.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{fn.__name__} got unexpected extra positional arguments")
        else:
            flat[name] = value
    return flat


def with_caller_prompt(output, prompt: torch.Tensor | None, reduced_prompt: torch.Tensor | None):
    """Replace the reduced prompt at the front of generate's output by the caller's own prompt ids."""
    if prompt is None or reduced_prompt is None:
        return output
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    restored = torch.cat([prompt.to(sequences.device), sequences[:, reduced_prompt.shape[1]:]], dim=1)
    if isinstance(output, torch.Tensor):
        return restored
    output.sequences = restored
    return output


def is_patched(model: torch.nn.Module) -> bool:
    return isinstance(model.__dict__.get("vtr"), VTRHandle)


def patch(model: torch.nn.Module, reducer: str | ReducerConfig, **config: Any) -> torch.nn.Module:
    """Patch ``model`` in place to reduce visual tokens with ``reducer``; returns the model.

    Args:
        model: a supported transformers model instance (see :func:`vtr.adapters.supported_families`).
        reducer: a registered reducer name (:func:`vtr.list_reducers`) or a config object such as
            ``vtr.reducers.random_subset.RandomConfig(keep=0.25, seed=1)``.
        **config: settings of the reducer's config class, e.g. ``keep=0.1``; override a config object's.

    Raises ``ValueError``/``TypeError`` for an unknown reducer, a bad or unknown setting, an
    unsupported model, or an already patched model; the model is left untouched.
    """
    if is_patched(model):
        raise ValueError(
            f"model is already patched with {model.vtr.reducer!r}; call vtr.unpatch(model) (or model.vtr.unpatch()) first"
        )
    spec, cfg = make_config(reducer, config)
    adapter = adapter_for(model)
    cfg.bind(model_info(adapter))  # settings checked against the model now and at every later edit
    check_positions(adapter, cfg)
    families = spec.reducer_class.families
    if families is not None and adapter.family not in families:
        hint = spec.reducer_class.family_hint
        raise ValueError(f"reducer {spec.name!r} works on {', '.join(families)} models, not {adapter.family!r}"
                         + (f"; {hint}" if hint else ""))
    check_signals(adapter, spec.reducer_class(cfg))
    VTRHandle(model, adapter, spec, cfg)._install()
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore ``model`` exactly as it was before :func:`patch`; returns the model."""
    if not is_patched(model):
        raise ValueError("model is not patched by vtr; nothing to unpatch")
    model.vtr._uninstall()
    return model


@contextlib.contextmanager
def patched(model: torch.nn.Module, reducer: str | ReducerConfig, **config: Any) -> Iterator[torch.nn.Module]:
    """``with vtr.patched(model, "fastervlm", keep=0.1): ...`` patches for the block, always restored."""
    patch(model, reducer, **config)
    try:
        yield model
    finally:
        unpatch(model)
