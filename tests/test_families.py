"""The foundation's property suite for every reducer on every family and input kind.

Family-specific references (eager attention for the kept indices, oracles, no-cache recomputes)
live in each family's own test file; here every registered built-in reducer must keep the
contracts that need no family knowledge: ``keep=1.0`` is the identity, unpatch restores the
model bitwise, batch-N equals batch-1, and generate returns the caller's prompt first.
"""
import pytest
import torch

import vtr
from helpers import generate_steps
from vtr.testing import example_inputs, tiny_model

CASES = [("gemma3", "image"), ("llava", "image"), ("llava_next", "image"), ("llava_onevision", "image+video"),
         ("qwen2_vl", "image"), ("qwen2_vl", "video"), ("qwen2_5_vl", "video"), ("qwen3_vl", "video"),
         ("video_llava", "image"), ("video_llava", "video")]
#: settings under which each reducer must be the identity
IDENTITY = {"fastervlm": {"keep": 1.0}, "random": {"keep": 1.0}, "fastv": {"keep": 1.0},
            "aim": {"keep": 1.0, "prune": False}}
#: settings that reduce, per reducer
REDUCING = {"fastervlm": {"keep": 0.25}, "random": {"keep": 0.25}, "fastv": {"keep": 0.25},
            "aim": {"keep": 0.5}, "atp": {}}


#: families whose adapter refuses reducers that drop tokens inside the LLM (Adapter.in_llm_refusal)
NO_IN_LLM = {"gemma3", "qwen3_vl"}


def refused(model, family, reducer, settings):
    """On a family that refuses in-LLM pruning, a reducer that would prune inside the LLM is refused at patch
    time with the family named (checked here); True when it was."""
    if family not in NO_IN_LLM or (reducer == "aim" and settings.get("prune") is False) or reducer in ("fastervlm", "random"):
        return False
    with pytest.raises(ValueError, match=rf"{reducer!r} drops visual tokens inside the LLM, which {family!r}"):
        vtr.patch(model, reducer, **settings)
    assert not vtr.is_patched(model)
    return True


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
    family, kind = request.param
    model, processor = tiny_model(family)
    return family, kind, model, processor






@pytest.mark.parametrize("reducer", sorted(IDENTITY))
def test_identity_and_bitwise_unpatch(case, reducer):
    family, kind, model, processor = case
    if refused(model, family, reducer, IDENTITY[reducer]):
        return
    inputs = example_inputs(processor, family, kind, batch=2, seed=1)
    with torch.no_grad():
        ref_logits = model(**inputs).logits
    ref_seq, ref_steps = generate_steps(model, inputs, n=3)
    with vtr.patched(model, reducer, **IDENTITY[reducer]):
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, ref_logits)
        seq, steps = generate_steps(model, inputs, n=3)
        assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)
    assert not vtr.is_patched(model) and "forward" not in model.__dict__
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref_logits)


@pytest.mark.parametrize("reducer", sorted(REDUCING))
def test_reduces_and_batch_equals_single(case, reducer):
    family, kind, model, processor = case
    if refused(model, family, reducer, REDUCING[reducer]):
        return
    inputs = example_inputs(processor, family, kind, batch=2, seed=3)
    with vtr.patched(model, reducer, **REDUCING[reducer]):
        seq, steps = generate_steps(model, inputs, n=3)
        stats = model.vtr.stats
        assert all(o < i for o, i in zip(stats.visual_tokens_out, stats.visual_tokens_in)), stats.summary()
        assert 0 < stats.flops_ratio < 1
        prompt = inputs["input_ids"].shape[1]
        assert torch.equal(seq[:, :prompt], inputs["input_ids"])  # the caller's prompt comes first
        counts = stats.visual_tokens_out
        for b in range(2):
            single = example_inputs(processor, family, kind, batch=1, seed=3 + b)
            seq1, steps1 = generate_steps(model, single, n=3)
            assert model.vtr.stats.visual_tokens_out == [counts[b]]
            assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, prompt:])
            torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=3e-5)
