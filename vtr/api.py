"""``patch`` / ``unpatch`` / ``patched`` and the ``model.vtr`` handle.

Patching is instance-level only: ``forward`` and ``generate`` are replaced by wrappers stored in
the instance's ``__dict__`` (never on a transformers class), and ``unpatch`` puts back exactly what
was there, so an unpatched model is bitwise the model that was patched.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Iterator

import torch

from vtr import reducers  # noqa: F401  (registers the built-in reducers)
from vtr.adapters import adapter_for
from vtr.engine import continuation
from vtr.engine.in_llm import llm_stage, loss_on_kept, record_llm_stage
from vtr.engine.proportional import attention_stage
from vtr.engine.pre_llm import check_positions, check_signals, reduce_call
from vtr.engine.streaming import CallerPromptStreamer
from vtr.config import ReducerConfig, model_info
from vtr.registry import make_config
from vtr.stats import ReductionStats

#: "the instance had no attribute of that name" (a string, so copies of a handle compare equal to it)
_MISSING = "<vtr: no instance attribute>"
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
        self._local, self._lock = threading.local(), threading.RLock()

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
        return self._original("forward")

    # -- per-call state and copies ---------------------------------------------------------------
    @property
    def _in_generate(self) -> bool:
        """True inside this thread's patched ``generate`` (its own forward steps are already reduced)."""
        return getattr(self._local, "in_generate", False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_local", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        # a copy (copy.deepcopy, pickle, torch.save) gets its own lock and per-thread state
        self.__dict__.update(state)
        self._local, self._lock = threading.local(), threading.RLock()

    def _original(self, name: str):
        """The model's ``name`` method as it was before patching, bound to this handle's model."""
        saved = self._saved.get(name, _MISSING)
        if not is_missing(saved):
            return saved
        return getattr(type(self._model), name).__get__(self._model)

    # -- installation ---------------------------------------------------------------------------
    def _install(self) -> None:
        model = self._model
        for name in _WRAPPED:
            self._saved[name] = model.__dict__.get(name, _MISSING)
            model.__dict__[name] = PatchedMethod(self, name)
        model.vtr = self

    def _forward(self, *args, **kwargs):
        original_forward = self._original("forward")
        if self._in_generate:  # generate's own prefill/decode steps: already reduced
            return original_forward(*args, **kwargs)
        call = bind_arguments(original_forward, args, kwargs)
        with self._lock:  # one patched call at a time per model (hooks and stats are per model)
            reduced = reduce_call(self, call, for_generate=False)
            with attention_stage(self.adapter, self.stats.key_bias), llm_stage(self, reduced) as engine:
                labels = reduced.pop("labels", None) if engine is not None else None
                shift_labels = reduced.pop("shift_labels", None) if engine is not None else None
                output = original_forward(**as_called(reduced, call))
            record_llm_stage(self.stats, engine, self.adapter.text_config)
        if labels is not None or shift_labels is not None:  # logits cover the kept rows only: align the labels
            logits = output.logits if not isinstance(output, tuple) else output[0]
            loss = loss_on_kept(self._model, logits, labels, engine, shift_labels)
            if isinstance(output, tuple):  # return_dict=False: transformers puts the loss first
                return (loss, *output)
            # rebuilt, not assigned: a ModelOutput made without a loss has no "loss" key, so an assigned one
            # would be missing from to_tuple() / output[0]
            output = type(output)(**{"loss": loss, **{k: v for k, v in output.items() if k != "loss"}})
        return output

    def _generate(self, *args, **kwargs):
        original_generate = self._original("generate")
        call = bind_arguments(original_generate, args, kwargs)
        if call.get("inputs") is not None and call.get("input_ids") is None:
            call["input_ids"] = call.pop("inputs")
        prompt = call.get("input_ids")
        with self._lock, self._outer_generate_suspended():
            return self._generate_locked(original_generate, call, prompt)

    @contextlib.contextmanager
    def _outer_generate_suspended(self) -> Iterator[None]:
        """A ``generate`` of this model called from inside its own ``generate`` in this thread (the model is its
        own ``assistant_model``): the outer call's in-LLM hooks are lifted while the inner one runs with its own,
        and the outer call's stats, engine and pass-through flag are back afterwards."""
        if not self._in_generate:
            yield
            return
        outer_engine, outer_stats = getattr(self._local, "engine", None), self.stats
        outer_attention = getattr(self._local, "attention", None)
        for stage in (outer_attention, outer_engine):
            if stage is not None:
                stage.suspend()
        try:
            yield
        finally:
            self._local.in_generate, self._local.engine, self.stats = True, outer_engine, outer_stats
            self._local.attention = outer_attention
            for stage in (outer_attention, outer_engine):  # the bias hooks prepend themselves: order holds
                if stage is not None:
                    stage.resume()

    def _generate_locked(self, original_generate, call: dict, prompt):
        cmap = continuation.map_of(continuation.cache_of(call))
        with torch.no_grad():
            if cmap is not None:  # a later turn: the cache holds reduced slots (see vtr.engine.continuation)
                tail = {}

                def reduce_tail(kwargs):
                    out = self._reduce_with_columns(kwargs)
                    tail["key_bias"] = self.stats.key_bias
                    return out

                reduced, columns = continuation.continue_call(self, call, cmap, reduce_tail)
                key_bias = continuation.continued_key_bias(cmap, reduced["input_ids"].shape[1], tail.get("key_bias"))
                stage = llm_stage(self, reduced, resume=cmap.engine)
            else:
                reduced, columns = self._reduce_with_columns(call)
                key_bias = self.stats.key_bias
                stage = llm_stage(self, reduced)
        if reduced.get("streamer") is not None and prompt is not None:
            reduced["streamer"] = CallerPromptStreamer(reduced["streamer"], prompt)
        self._local.in_generate = True
        try:
            with attention_stage(self.adapter, key_bias) as attention, stage as engine:
                self._local.engine, self._local.attention = engine, attention
                if engine is not None or attention is not None:
                    # per-layer hooks (an in-LLM stage's pruning, proportional attention's mask bias) run in every
                    # decode step and cannot be traced: generate's automatic compilation (compileable cache +
                    # compile_config) is turned off for them
                    reduced = {**reduced, "disable_compile": True}
                output = original_generate(**as_called(reduced, call))
        finally:
            self._local.in_generate, self._local.engine, self._local.attention = False, None, None
        if cmap is None:
            record_llm_stage(self.stats, engine, self.adapter.text_config)
        output = with_caller_prompt(output, prompt, reduced.get("input_ids"))
        if prompt is not None and reduced.get("input_ids") is not None:
            cache = getattr(output, "past_key_values", None) or continuation.cache_of(call)
            sequences = output if isinstance(output, torch.Tensor) else output.sequences
            continuation.record_map(self, cache, sequences, prompt.shape[1], reduced, columns, engine, key_bias)
        return output

    def _reduce_with_columns(self, call: dict) -> tuple[dict, torch.Tensor | None]:
        """``reduce_call`` for generate, plus ``(B, L')`` the caller column of each reduced column (``-1`` for
        re-padding filler; ``None`` when the prompt is passed on unchanged)."""
        reduced = reduce_call(self, call, for_generate=True)
        if reduced.get("input_ids") is call.get("input_ids"):
            return reduced, None
        device = next(v.device for v in reduced.values() if isinstance(v, torch.Tensor))
        return reduced, torch.stack(self.stats.kept_columns).to(device)

    def _uninstall(self) -> None:
        model = self._model
        for name in _WRAPPED:
            saved = self._saved.get(name, _MISSING)
            if is_missing(saved):
                model.__dict__.pop(name, None)
            else:
                model.__dict__[name] = saved
        model.__dict__.pop("vtr", None)


def as_called(reduced: dict, call: dict) -> dict:
    """``reduced`` as the original method takes it: ``input_ids`` that vtr derived from the caller's
    ``inputs_embeds`` (to find the placeholders) are dropped again when the caller passed none, since the
    model refuses both at once and ``generate`` then returns only the new tokens."""
    if call.get("input_ids") is None and reduced.get("inputs_embeds") is not None and "input_ids" in reduced:
        return {k: v for k, v in reduced.items() if k != "input_ids"}
    return reduced


def is_missing(saved) -> bool:
    return isinstance(saved, str) and saved == _MISSING


class PatchedMethod:
    """``forward``/``generate`` of a patched model, stored in the instance's ``__dict__``.

    It holds the handle, not the original bound method, and resolves the model at call time: a copy of
    the model (``copy.deepcopy``, ``pickle``, ``torch.save``) copies its handle with it and runs reduced
    on its own weights. The signature is the original method's (``generate`` inspects ``forward``'s).
    """

    def __init__(self, handle: VTRHandle, name: str) -> None:
        self.handle, self.name = handle, name
        self.__name__ = self.__qualname__ = name

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.handle._original(self.name))

    def __call__(self, *args, **kwargs):
        return getattr(self.handle, "_" + self.name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<vtr-patched {self.name} of {type(self.handle.model).__name__} ({self.handle.reducer})>"


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
    if sequences.shape[0] % prompt.shape[0]:
        raise RuntimeError(f"generate returned {sequences.shape[0]} rows for a batch of {prompt.shape[0]}")
    # num_return_sequences repeats each prompt's row (repeat_interleave), so each copy gets its own prompt back
    prompt = prompt.to(sequences.device).repeat_interleave(sequences.shape[0] // prompt.shape[0], dim=0)
    restored = torch.cat([prompt, sequences[:, reduced_prompt.shape[1]:]], dim=1)
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
