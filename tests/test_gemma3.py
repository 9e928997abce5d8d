"""Gemma 3: SigLIP (no [CLS]) average-pooled to a fixed token grid, bidirectional attention over image tokens.

The cross-family contracts (keep=1.0 identity, bitwise unpatch, batch-N == batch-1, prompt first) for the
pre-LLM reducers run on this family in tests/test_families.py, fopru and pool in tests/test_prellm_reducers.py.
References here: eager SigLIP attention weights pooled with ``F.avg_pool2d``, the unpatched model fed only the
kept tokens (its own bidirectional image mask over them), a no-cache recompute.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vtr
from helpers import budget, check_implementation_and_dtype, forward_logits, generate_steps
from reference import reference_topk
from vtr.testing import example_inputs, random_image, tiny_model
from vtr.testing.gemma3 import BOI

FAMILY = "gemma3"


@pytest.fixture(scope="module")
def gemma():
    """One tiny Gemma 3 for the module; every test leaves it unpatched and in fp32/SDPA."""
    model, processor = tiny_model(FAMILY)
    yield model, processor
    assert not vtr.is_patched(model)


def eager_pooled_received(model, pixels):
    """``(n, 64)``: attention each patch receives at the last SigLIP layer (eager ``output_attentions``, mean over
    heads and queries), on the 16×16 patch grid, average-pooled 2×2 like the features."""
    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        out = tower(pixels, output_attentions=True)
    received = out.attentions[-1].float().mean(1).mean(1)  # (n, 256)
    return F.avg_pool2d(received.view(-1, 1, 16, 16), 2).flatten(1)


def test_the_tiny_model_pools_and_slides(gemma):
    """The properties below are only meaningful if the features are pooled and prompts exceed the sliding window."""
    model, processor = gemma
    inputs = example_inputs(processor, FAMILY, "image", batch=2, seed=1)
    assert model.model.multi_modal_projector.kernel_size == 2
    assert inputs["input_ids"].shape[1] > model.config.text_config.sliding_window
    assert torch.equal(inputs["token_type_ids"] == 1, inputs["input_ids"] == model.config.image_token_id)


@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_signal_is_topk_of_eager_received_attention_pooled_like_the_features(gemma, keep):
    model, processor = gemma
    inputs = example_inputs(processor, FAMILY, "image", batch=2, seed=1)
    scores = eager_pooled_received(model, inputs["pixel_values"])
    with vtr.patched(model, "fastervlm", keep=keep):
        model(**inputs)
        stats = model.vtr.stats
    assert [v.grid for v in stats.views] == [(8, 8)] * 2 and [v.sample for v in stats.views] == [0, 1]
    for view, s in zip(stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, budget(keep, 64)))
    assert stats.adapted and any("gemma3" in n and "no [CLS]" in n for n in stats.notes)


def test_patched_forward_equals_oracle_fed_kept_tokens(gemma):
    """Logits and loss equal the unpatched model fed only the kept tokens (token_type_ids gathered, so the kept
    image tokens attend to each other both ways) at their original positions."""
    model, processor = gemma
    rng = np.random.default_rng(7)
    inputs = processor(images=[[random_image(rng), random_image(rng)]],
                       text=f"USER: {BOI} and {BOI} compare the two ASSISTANT:", return_tensors="pt")
    ids = inputs["input_ids"]
    labels = ids.masked_fill(inputs["token_type_ids"] == 1, -100)
    with vtr.patched(model, "fastervlm", keep=0.25):
        with torch.no_grad():
            out = model(**inputs, labels=labels)
        kept = [v.kept for v in model.vtr.stats.views]
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], return_dict=True)
    image_columns = (ids[0] == model.config.image_token_id).nonzero()[:, 0].view(2, 64)
    keep_cols = torch.cat([image_columns[i, k] for i, k in enumerate(kept)])
    cols = torch.cat([(ids[0] != model.config.image_token_id).nonzero()[:, 0], keep_cols]).sort().values
    features.pooler_output = torch.cat([features.pooler_output[i, k] for i, k in enumerate(kept)])[None]
    with torch.no_grad():
        ref = model(input_ids=ids[:, cols], attention_mask=inputs["attention_mask"][:, cols], position_ids=cols[None],
                    token_type_ids=inputs["token_type_ids"][:, cols], mm_encoder_outputs={"image": features},
                    labels=labels[:, cols])
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_image_outputs_keep_the_unpatched_per_image_layout(gemma, keep):
    """The model returns its feature output as ``image_outputs``: patched, its ``pooler_output`` is still
    ``(n_images, tokens, D)``, the unpatched rows themselves at keep=1.0 and their kept rows below it."""
    model, processor = gemma
    inputs = example_inputs(processor, FAMILY, "image", batch=2, seed=1)
    with torch.no_grad():
        ref = model(**inputs).image_outputs.pooler_output  # (n_images, mm_tokens_per_image, D)
    with vtr.patched(model, "fastervlm", keep=keep):
        with torch.no_grad():
            got = model(**inputs).image_outputs.pooler_output
        kept = [view.kept for view in model.vtr.stats.views]
    k = budget(keep, ref.shape[1])
    assert got.shape == (ref.shape[0], k, ref.shape[2])
    assert torch.equal(got, torch.stack([r[i] for r, i in zip(ref, kept)]))


def test_cached_generate_equals_no_cache_recompute(gemma):
    model, processor = gemma
    inputs = example_inputs(processor, FAMILY, "image", batch=2, seed=3)
    n = 4
    with vtr.patched(model, "fastervlm", keep=0.25):
        seq, steps = generate_steps(model, inputs, n=n)
        prompt_len = inputs["input_ids"].shape[1]
        assert torch.equal(seq[:, :prompt_len], inputs["input_ids"])
        new = seq[:, prompt_len:-1]
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
        recompute = {**inputs, "input_ids": seq[:, :-1], "attention_mask": mask,
                     "token_type_ids": torch.cat([inputs["token_type_ids"], torch.zeros_like(new)], 1),
                     "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("implementation, dtype", [("eager", torch.float32), ("sdpa", torch.bfloat16)])
def test_attention_implementations_and_bf16(implementation, dtype):
    _, stats = check_implementation_and_dtype(FAMILY, "image", implementation, dtype, reducer="pool")
    assert stats.visual_tokens_out == [16, 16]


def test_in_llm_and_cls_reducers_are_refused_at_patch_time(gemma):
    model, processor = gemma
    for reducer, options in (("fastv", {}), ("atp", {}), ("aim", {"keep": 0.5})):
        with pytest.raises(ValueError, match=rf"'{reducer}' drops visual tokens inside the LLM, which 'gemma3'"):
            vtr.patch(model, reducer, **options)
        assert not vtr.is_patched(model)
    for reducer in ("vtc_cls", "globalcom2", "quota"):
        with pytest.raises(ValueError, match=rf"'{reducer}' works on .* not 'gemma3'"):
            vtr.patch(model, reducer)
    inputs = example_inputs(processor, FAMILY, "image", batch=1)
    with vtr.patched(model, "aim", keep=0.5, prune=False):  # merging before the LLM only: runs
        model(**inputs)
        assert model.vtr.stats.visual_tokens_out[0] < model.vtr.stats.visual_tokens_in[0]
    with vtr.patched(model, "fastervlm", keep=0.25):
        with pytest.raises(ValueError, match="token_type_ids"):
            model(**{k: v for k, v in inputs.items() if k != "token_type_ids"})
