"""Tiny, deterministic, offline models and inputs for tests, demos, notebooks and benchmarks.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on the spot, the model
is randomly initialised from a seed, and the processor is transformers' own class built from
explicit settings, so what is exercised is what users call. One module per family provides
``build(seed, overrides) -> (model, processor)``, ``make_inputs(processor, kind, seeds)`` and ``KINDS``.
"""
from __future__ import annotations

import importlib
from typing import Any

from vtr.testing.media import PROMPTS, chat_prompt, random_frames, random_image
from vtr.testing.tokenizer import build_tokenizer

FAMILY_MODULES = {"gemma3": "vtr.testing.gemma3", "llava": "vtr.testing.llava", "llava_next": "vtr.testing.llava_next",
                  "llava_onevision": "vtr.testing.llava_onevision", "qwen2_vl": "vtr.testing.qwen2_vl",
                  "qwen2_5_vl": "vtr.testing.qwen2_5_vl", "qwen3_vl": "vtr.testing.qwen3_vl", "video_llava": "vtr.testing.video_llava"}


def _family(family: str):
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown family {family!r}; available: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[family])


def tiny_model(family: str = "llava", seed: int = 0, **overrides: Any):
    """A tiny random-init model of ``family`` and its real processor, built offline in < 1 s.

    ``overrides`` update the top-level model config; ``vision={...}`` and ``text={...}`` update
    the vision and text sub-configs (e.g. ``text={"num_hidden_layers": 2}``).
    Returns ``(model, processor)``; the model is in eval mode, fp32, SDPA attention.
    """
    return _family(family).build(seed, dict(overrides))


def example_inputs(processor, family: str = "llava", kind: str = "image", batch: int = 1, seed: int = 0):
    """Ready processor outputs: ``batch`` rows with random media and prompts of different lengths.

    Row ``i`` is drawn from seed ``seed + i`` alone, so ``example_inputs(..., batch=1, seed=seed + i)``
    is exactly row ``i`` without padding (what batch-N-equals-batch-1 tests compare against).
    Rows are left-padded when ``batch > 1``.
    """
    module = _family(family)
    if kind not in module.KINDS:
        raise ValueError(f"kind={kind!r} is not available for family {family!r}; allowed: {', '.join(module.KINDS)}")
    return module.make_inputs(processor, kind, [seed + i for i in range(batch)])


__all__ = ["tiny_model", "example_inputs", "build_tokenizer", "chat_prompt", "random_image", "random_frames",
           "PROMPTS", "FAMILY_MODULES"]
