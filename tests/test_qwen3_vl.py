"""Qwen3-VL: DeepStack streams, timestamped frame groups, interleaved M-RoPE, on top of the Qwen2-VL properties.

The cross-family contracts (keep=1.0 identity, bitwise unpatch, batch-N == batch-1, prompt first) run on this
family in tests/test_families.py. References here: the tower's own eager attention weights, the unpatched
model fed only the kept tokens with *every* DeepStack level gathered the same way (written out here), the
unpatched model's own M-RoPE positions, a no-cache recompute.
"""
import pytest
import torch

import vtr
from helpers import budget, check_implementation_and_dtype, forward_logits, generate_steps, special_ids
from reference_qwen2_vl import eager_received_attention, reference_topk, unpatched_positions
from vtr.testing import example_inputs, tiny_model

FAMILY = "qwen3_vl"
KEYS = {"image": ("pixel_values", "image_grid_thw", "image_token_id", "get_image_features"),
        "video": ("pixel_values_videos", "video_grid_thw", "video_token_id", "get_video_features")}


@pytest.fixture(scope="module")
def qwen():
    """One tiny Qwen3-VL for the module; every test leaves it unpatched and in fp32/SDPA."""
    model, processor = tiny_model(FAMILY)
    yield model, processor
    assert not vtr.is_patched(model)


def oracle_forward(model, inputs, kind, kept, labels):
    """The unpatched model fed one row's kept tokens: placeholder columns, the main features and every DeepStack
    level taken at the same kept indices (frame group ``g`` of a video owns indices ``[g·n, (g+1)·n)``), the
    unpatched positions at the kept columns."""
    pixels, grids, token, function = KEYS[kind]
    positions = unpatched_positions(model, inputs)
    with torch.no_grad():
        out = getattr(model.model, function)(inputs[pixels], inputs[grids], return_dict=True)
    t, h, w = inputs[grids][0].tolist()
    per_group = h * w // 4
    index = torch.cat([g * per_group + k for g, k in enumerate(kept)])
    out.pooler_output = (out.pooler_output[0][index],)
    out.deepstack_features = [(level[0][index],) for level in out.deepstack_features]
    ids = inputs["input_ids"][0]
    placeholders = (ids == getattr(model.config, token)).nonzero()[:, 0]
    cols = torch.cat([(ids != getattr(model.config, token)).nonzero()[:, 0], placeholders[index]]).sort().values
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"][:, cols], attention_mask=inputs["attention_mask"][:, cols],
                     mm_token_type_ids=inputs["mm_token_type_ids"][:, cols], position_ids=positions[:, :, cols],
                     mm_encoder_outputs={kind: out}, labels=labels[:, cols])


def test_tiny_model_has_deepstack_and_timestamped_groups(qwen):
    model, processor = qwen
    assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1, 2]
    video = example_inputs(processor, FAMILY, "video", batch=1, seed=2)
    ids = video["input_ids"][0]
    starts = int((ids == model.config.vision_start_token_id).sum())
    assert starts == int(video["video_grid_thw"][0, 0]) > 1  # one vision block per frame group
    with torch.no_grad():
        out = model.model.get_video_features(video["pixel_values_videos"], video["video_grid_thw"], return_dict=True)
    assert len(out.deepstack_features) == 3 and out.deepstack_features[0][0].shape == out.pooler_output[0].shape


@pytest.mark.parametrize("kind", ["image", "video"])
def test_signal_is_topk_of_eager_received_attention(qwen, kind):
    model, processor = qwen
    inputs = example_inputs(processor, FAMILY, kind, batch=2, seed=1)
    pixels, grids = KEYS[kind][:2]
    scores = eager_received_attention(model, inputs[pixels], inputs[grids])
    with vtr.patched(model, "fastervlm", keep=0.25):
        model(**inputs)
        stats = model.vtr.stats
    assert len(stats.views) == len(scores) == int(inputs[grids][:, 0].sum())
    for view, s in zip(stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, budget(0.25, s.numel())))
    assert stats.adapted and any("qwen3_vl" in n for n in stats.notes)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_patched_forward_equals_oracle_with_every_deepstack_stream_reduced(qwen, kind):
    model, processor = qwen
    inputs = example_inputs(processor, FAMILY, kind, batch=1, seed=2)
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"] != 0, -100)
    with vtr.patched(model, "fastervlm", keep=0.25):
        with torch.no_grad():
            out = model(**inputs, labels=labels)
        kept = [v.kept for v in model.vtr.stats.views]
    ref = oracle_forward(model, inputs, kind, kept, labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)


def test_cached_generate_equals_no_cache_recompute(qwen):
    model, processor = qwen
    inputs = example_inputs(processor, FAMILY, "video", batch=2, seed=3)
    n = 4
    with vtr.patched(model, "fastervlm", keep=0.25):
        seq, steps = generate_steps(model, inputs, n=n)
        prompt_len = inputs["input_ids"].shape[1]
        assert torch.equal(seq[:, :prompt_len], inputs["input_ids"])
        new = seq[:, prompt_len:-1]
        recompute = {**inputs, "input_ids": seq[:, :-1],
                     "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1),
                     "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1)}
        logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)


def test_merging_reducer_runs_and_says_what_deepstack_gets(qwen):
    model, processor = qwen
    inputs = example_inputs(processor, FAMILY, "image", batch=2, seed=1)
    with vtr.patched(model, "pool", keep=0.25):
        seq = model.generate(**inputs, max_new_tokens=2, do_sample=False, suppress_tokens=special_ids(model))
        notes = model.vtr.stats.notes
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 2
    assert any("DeepStack" in n for n in notes)


@pytest.mark.parametrize("implementation, dtype", [("eager", torch.float32), ("sdpa", torch.bfloat16)])
def test_attention_implementations_and_bf16(implementation, dtype):
    check_implementation_and_dtype(FAMILY, "video", implementation, dtype)


def test_in_llm_and_cls_reducers_are_refused_at_patch_time(qwen):
    model, _ = qwen
    for reducer in ("fastv", "atp"):
        with pytest.raises(ValueError, match=rf"'{reducer}' drops visual tokens inside the LLM, which 'qwen3_vl'"):
            vtr.patch(model, reducer, keep=0.25)
    for reducer in ("vtc_cls", "globalcom2"):
        with pytest.raises(ValueError, match=rf"'{reducer}' works on .* not 'qwen3_vl'"):
            vtr.patch(model, reducer)
    assert not vtr.is_patched(model)
