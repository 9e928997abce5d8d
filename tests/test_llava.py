"""Property suite for LLaVA-1.5, each property checked against an independent reference."""
import pytest
import torch

import vtr
from helpers import forward_logits, generate_steps
from reference import eager_cls_attention, oracle_forward, reference_topk
from vtr.testing import chat_prompt, example_inputs, random_image

REDUCERS = ["fastervlm", "random"]






@pytest.mark.parametrize("reducer", REDUCERS)
def test_keep_one_is_identity(llava, inputs2, reducer):
    model, _ = llava
    ref_logits = forward_logits(model, inputs2)
    ref_seq, ref_steps = generate_steps(model, inputs2)
    for positions in ("original", "renumber"):
        with vtr.patched(model, reducer, keep=1.0, positions=positions):
            assert torch.equal(forward_logits(model, inputs2), ref_logits)
            seq, steps = generate_steps(model, inputs2)
            assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)


def test_fastervlm_keeps_topk_of_eager_cls_attention(llava, inputs2):
    model, _ = llava
    scores = eager_cls_attention(model, inputs2["pixel_values"], layer=-2)
    vtr.patch(model, "fastervlm", keep=0.1)
    model(**inputs2)
    for view, s in zip(model.vtr.stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, 58))


def test_fastervlm_follows_the_feature_layer(llava, inputs2):
    model, _ = llava
    scores = eager_cls_attention(model, inputs2["pixel_values"], layer=-3)
    vtr.patch(model, "fastervlm", keep=0.25)
    model(**inputs2, vision_feature_layer=-3)
    assert all(torch.equal(v.kept, reference_topk(s, 144)) for v, s in zip(model.vtr.stats.views, scores))


@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_patched_forward_equals_oracle_fed_kept_tokens(llava, inputs2, positions):
    """Logits and loss of the patched model equal the unpatched model given only the kept tokens."""
    model, _ = llava
    labels = inputs2["input_ids"].masked_fill(inputs2["input_ids"] == model.config.image_token_id, -100)
    labels = labels.masked_fill(inputs2["attention_mask"] == 0, -100)
    vtr.patch(model, "fastervlm", keep=0.1, positions=positions)
    with torch.no_grad():
        out = model(**inputs2, labels=labels)
    kept = [v.kept for v in model.vtr.stats.views]
    vtr.unpatch(model)
    ref = oracle_forward(model, inputs2, kept, positions=positions, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)
    assert out.loss.isfinite()


@pytest.mark.parametrize("reducer", REDUCERS)
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_batch_equals_single(llava, inputs2, reducer, positions):
    model, processor = llava
    vtr.patch(model, reducer, keep=0.1, positions=positions)
    seq, steps = generate_steps(model, inputs2)
    batch_views = [v.kept for v in model.vtr.stats.views]
    prompt_len = inputs2["input_ids"].shape[1]
    for b in range(2):
        row = inputs2["attention_mask"][b].bool()
        single = {"input_ids": inputs2["input_ids"][b:b + 1, row], "attention_mask": inputs2["attention_mask"][b:b + 1, row],
                  "pixel_values": inputs2["pixel_values"][b:b + 1]}
        seq1, steps1 = generate_steps(model, single)
        assert torch.equal(model.vtr.stats.views[0].kept, batch_views[b])
        assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, prompt_len:])
        torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions", ["original", "renumber"])
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_generate_equals_no_cache_recompute(llava, positions, batch):
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=batch, seed=3)
    vtr.patch(model, "fastervlm", keep=0.1, positions=positions)
    seq, steps = generate_steps(model, inputs, n=5)
    assert torch.equal(seq[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])  # caller's prompt first
    full_mask = torch.cat([inputs["attention_mask"], torch.ones_like(seq[:, inputs["input_ids"].shape[1]:])], 1)
    recompute = {"input_ids": seq[:, :-1], "attention_mask": full_mask[:, :-1], "pixel_values": inputs["pixel_values"]}
    if positions == "original":  # generate numbers from the mask; give the no-cache pass the same numbering
        recompute["position_ids"] = (full_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
    logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -5:], steps, rtol=0, atol=1e-5)


def test_original_positions_continue_after_the_image(llava):
    """With original positions, text after a pruned image keeps its unpruned position ids."""
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=1, seed=2)
    seen = {}

    def record(module, args, kwargs):
        seen["pos"] = kwargs.get("position_ids")

    handle = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        vtr.patch(model, "fastervlm", keep=0.1)
        model(**inputs)
    finally:
        handle.remove()
    n = inputs["input_ids"].shape[1]
    assert seen["pos"][0, -1].item() == n - 1 and seen["pos"].shape[1] == n - (576 - 58)


def test_two_images_in_one_prompt(llava):
    import numpy as np

    model, processor = llava
    rng = np.random.default_rng(5)
    images = [random_image(rng), random_image(rng)]
    inputs = processor(images=images, text=chat_prompt("compare <image> with", "<image>"), return_tensors="pt")
    scores = eager_cls_attention(model, inputs["pixel_values"])
    vtr.patch(model, "fastervlm", keep=0.1)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    stats = model.vtr.stats
    assert [v.sample for v in stats.views] == [0, 0] and stats.visual_tokens_out == [116]
    assert all(torch.equal(v.kept, reference_topk(s, 58)) for v, s in zip(stats.views, scores))
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_full_strategy_keeps_cls_feature():
    from vtr.testing import tiny_model

    model, processor = tiny_model("llava", vision_feature_select_strategy="full")
    inputs = example_inputs(processor, "llava", batch=2)
    assert (inputs["input_ids"][0] == model.config.image_token_id).sum() == 577
    scores = eager_cls_attention(model, inputs["pixel_values"])
    vtr.patch(model, "fastervlm", keep=10)
    model(**inputs)
    assert model.vtr.stats.visual_tokens_out == [11, 11] and model.vtr.stats.visual_tokens_in == [577, 577]
    assert all(torch.equal(v.kept, reference_topk(s, 10)) for v, s in zip(model.vtr.stats.views, scores))


def test_random_is_seeded(llava, inputs2):
    model, _ = llava
    picks = []
    for seed in (0, 0, 1):
        with vtr.patched(model, "random", keep=0.1, seed=seed):
            model(**inputs2)
            picks.append([v.kept for v in model.vtr.stats.views])
    assert all(torch.equal(a, b) for a, b in zip(picks[0], picks[1]))
    assert not torch.equal(picks[0][0], picks[2][0])


def test_text_only_call_passes_through(llava):
    model, processor = llava
    inputs = processor.tokenizer(["hello world"], return_tensors="pt")
    ref = forward_logits(model, inputs)
    vtr.patch(model, "fastervlm", keep=0.1)
    assert torch.equal(forward_logits(model, inputs), ref)
    assert model.vtr.stats.visual_tokens_in == [0]  # the same shape of stats for every reducer (issue 18)


def test_positional_arguments_are_understood(llava, inputs2):
    model, _ = llava
    vtr.patch(model, "fastervlm", keep=0.1)
    with torch.no_grad():
        out = model(inputs2["input_ids"], inputs2["pixel_values"], inputs2["attention_mask"])
    assert model.vtr.stats.visual_tokens_out == [58, 58] and out.logits.shape[1] == inputs2["input_ids"].shape[1] - 518
    seq = model.generate(inputs2["input_ids"], pixel_values=inputs2["pixel_values"],
                         attention_mask=inputs2["attention_mask"], max_new_tokens=2, do_sample=False)
    assert torch.equal(seq[:, :inputs2["input_ids"].shape[1]], inputs2["input_ids"])


@pytest.mark.parametrize("reducer", REDUCERS)
def test_bf16(llava, inputs2, reducer):
    model, _ = llava
    model.to(torch.bfloat16)
    inputs = {**inputs2, "pixel_values": inputs2["pixel_values"].to(torch.bfloat16)}
    ref = forward_logits(model, inputs)
    with vtr.patched(model, reducer, keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    vtr.patch(model, reducer, keep=0.1)
    seq = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 3
    if reducer == "fastervlm":
        # bf16 eager weights are rounded, so compare by score: every kept patch scores at least the
        # 58th-best reference score, up to bf16 rounding.
        scores = eager_cls_attention(model, inputs["pixel_values"])
        for view, s in zip(model.vtr.stats.views, scores):
            threshold = s.topk(58).values[-1]
            assert (s[view.kept] >= threshold - 2e-2 * threshold.abs()).all()
    vtr.unpatch(model)
    assert torch.equal(forward_logits(model, inputs), ref)
