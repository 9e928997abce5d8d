"""The two properties every reducer's test file checks on tiny models: ``keep=1.0`` equals the unpatched
model (logits and greedy generate, bitwise) and a batch of two rows equals the two rows run alone.
Also a ``VisualTokens`` builder for unit tests of a reducer's rule against a slow reference."""
import functools

import numpy as np
import torch

import vtr
from helpers import forward_logits, generate_steps
from vtr.testing import chat_prompt, example_inputs, random_image, tiny_model
from vtr.visual import Signals, View, VisualTokens


@functools.cache
def model_of(family):
    """One tiny model per family and test session; every check leaves it unpatched (``vtr.patched``)."""
    return tiny_model(family)


def check_keep_one_is_identity(reducer, family="llava", kind="image", **options):
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, kind, batch=2, seed=1)
    ref_logits = forward_logits(model, inputs)
    ref_seq, ref_steps = generate_steps(model, inputs)
    with vtr.patched(model, reducer, keep=1.0, **options):
        assert torch.equal(forward_logits(model, inputs), ref_logits)
        seq, steps = generate_steps(model, inputs)
        assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)
        assert model.vtr.stats.visual_tokens_out == model.vtr.stats.visual_tokens_in


def same_length_inputs(processor, seeds=(1, 2)):
    """LLaVA rows with different images and one prompt: no padding, so every kernel sees each row alone."""
    images = [random_image(np.random.default_rng(s)) for s in seeds]
    return processor(images=images, text=[chat_prompt("what is in the image?")] * len(seeds), return_tensors="pt")


def check_batch_equals_single(reducer, family="llava", kind="image", keep=0.1, atol=1e-5, padded=True, **options):
    """Kept tokens equal exactly; logits of each row equal its batch-1 run within float tolerance
    (left padding changes the kernels' reduction order, not the selection). ``padded=False`` (LLaVA):
    rows of one length, for reducers that rank decoder hidden states, where padding's float noise
    (~1e-8) can flip near-ties."""
    model, processor = model_of(family)
    if padded:
        inputs = example_inputs(processor, family, kind, batch=2, seed=1)
        singles = [example_inputs(processor, family, kind, batch=1, seed=1 + b) for b in range(2)]
    else:
        inputs = same_length_inputs(processor)
        singles = [same_length_inputs(processor, (1 + b,)) for b in range(2)]
    with vtr.patched(model, reducer, keep=keep, **options):
        batched = forward_logits(model, inputs)
        stats = model.vtr.stats
        assert stats.visual_tokens_out != stats.visual_tokens_in  # something was reduced
        views = [(v.sample, v.kept) for v in stats.views]
        kept_cols = [c[c >= 0] for c in stats.kept_columns]
        for b in range(2):
            single_inputs = singles[b]
            single = forward_logits(model, single_inputs)
            s = model.vtr.stats
            assert [v.kept.tolist() for v in s.views] == [kept.tolist() for row, kept in views if row == b]
            pad = inputs["input_ids"].shape[1] - single_inputs["input_ids"].shape[1]
            shifted = kept_cols[b] - pad
            assert torch.equal(shifted[shifted >= 0], s.kept_columns[0][s.kept_columns[0] >= 0])
            torch.testing.assert_close(batched[b, -3:], single[0, -3:], atol=atol, rtol=1e-4)


def visual_tokens(features, signals=None, grid=None, n_prefix=0):
    """A ``VisualTokens`` of one view per ``(n_prefix + h·w, D)`` feature tensor, with given signal lists."""
    views = []
    for f in features:
        n = f.shape[0] - n_prefix
        g = grid or (1, n)
        views.append(View(sample=len(views), grid=g, n_prefix=n_prefix, token_id=0))
    providers = {name: (lambda value=value: value) for name, value in (signals or {}).items()}
    return VisualTokens(list(features), views, Signals("test", providers))
