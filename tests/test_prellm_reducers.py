"""The property suite for the pre-LLM reducers fopru, vtc_cls, globalcom2 and pool, on every family where
each makes sense: keep=1.0 is the identity, batch-N equals batch-1, cached generate equals a no-cache
recompute. The references are the unpatched model, batch-1 runs and a full recompute; each reducer's
own scores and features are checked against eager attention or torch pooling in tests/test_<reducer>.py.
"""
import functools

import pytest
import torch

import vtr
from vtr.testing import example_inputs, tiny_model

#: (reducer, options, family, input kind)
CASES = [
    ("fopru", {}, "llava", "image"),
    ("fopru", {"strategy": "row"}, "llava_next", "image"),
    ("fopru", {"attention": "probs", "strategy": "row"}, "qwen2_vl", "image"),
    ("fopru", {}, "qwen2_5_vl", "video"),
    ("fopru", {}, "llava_onevision", "image+video"),
    ("vtc_cls", {"start_layer": 1}, "llava", "image"),
    ("vtc_cls", {}, "video_llava", "video"),
    ("globalcom2", {}, "llava_next", "image"),
    ("globalcom2", {"thumbnail_order": "score"}, "llava_next", "image"),
    ("pool", {}, "llava", "image"),
    ("pool", {"anchor": "top_left"}, "llava_next", "image"),
    ("pool", {}, "qwen2_vl", "video"),
    ("pool", {}, "qwen2_5_vl", "image"),
    ("pool", {}, "llava_onevision", "image+video"),
    ("pool", {}, "gemma3", "image"),
    ("fopru", {}, "gemma3", "image"),
    ("pool", {}, "video_llava", "video"),
]
IDS = [f"{r}-{f}-{k}" + "".join(f"-{v}" for v in o.values()) for r, o, f, k in CASES]
KEEP = {"llava": 0.1, "llava_next": 0.25, "qwen2_vl": 0.25, "qwen2_5_vl": 0.25, "llava_onevision": 0.25, "gemma3": 0.25, "video_llava": 0.1}


@functools.cache
def model_of(family):
    """One tiny model per family for this module; every test leaves it unpatched (``vtr.patched``)."""
    return tiny_model(family)


def forward_logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def special_ids(model):
    """Placeholder and vision-marker ids: a recompute would misread them if generate emitted them."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [getattr(model.config, n) for n in names if getattr(model.config, n, None) is not None]


def generate_steps(model, inputs, n=4):
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, suppress_tokens=special_ids(model))
    return out.sequences, torch.stack(out.logits, dim=1)  # (B, T), (B, n, V)


@pytest.mark.parametrize("reducer, options, family, kind", CASES, ids=IDS)
def test_keep_one_is_identity(reducer, options, family, kind):
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, kind, batch=2, seed=1)
    ref_logits = forward_logits(model, inputs)
    ref_seq, ref_steps = generate_steps(model, inputs)
    with vtr.patched(model, reducer, keep=1.0, **options):
        assert torch.equal(forward_logits(model, inputs), ref_logits)
        seq, steps = generate_steps(model, inputs)
        assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)
        stats = model.vtr.stats
        assert stats.visual_tokens_out == stats.visual_tokens_in


@pytest.mark.parametrize("reducer, options, family, kind", CASES, ids=IDS)
def test_batch_equals_single(reducer, options, family, kind):
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, kind, batch=2, seed=1)
    with vtr.patched(model, reducer, keep=KEEP[family], **options):
        seq, steps = generate_steps(model, inputs)
        stats = model.vtr.stats
        assert stats.visual_tokens_out != stats.visual_tokens_in  # something was reduced
        prompt_len = inputs["input_ids"].shape[1]
        for b in range(2):
            single = example_inputs(processor, family, kind, batch=1, seed=1 + b)
            seq1, steps1 = generate_steps(model, single)
            mine = [v.kept.tolist() for v in stats.views if v.sample == b]
            assert [v.kept.tolist() for v in model.vtr.stats.views] == mine
            assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, prompt_len:])
            torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("reducer, options, family, kind", CASES, ids=IDS)
def test_cached_generate_equals_no_cache_recompute(reducer, options, family, kind):
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, kind, batch=2, seed=3)
    n = 4
    with vtr.patched(model, reducer, keep=KEEP[family], **options):
        seq, steps = generate_steps(model, inputs, n=n)
        prompt_len = inputs["input_ids"].shape[1]
        assert torch.equal(seq[:, :prompt_len], inputs["input_ids"])  # the caller's prompt comes first
        new = seq[:, prompt_len:-1]
        recompute = {**inputs, "input_ids": seq[:, :-1],
                     "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)}
        if family in ("qwen2_vl", "qwen2_5_vl"):  # the patched forward computes M-RoPE positions itself
            recompute["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1)
        else:  # generate numbers from the mask; give the no-cache pass the same numbering
            recompute["position_ids"] = (recompute["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if "token_type_ids" in inputs:  # Gemma 3: the new tokens are text
            recompute["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.zeros_like(new)], 1)
        logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)
