"""Property suite for Qwen2-VL (images and videos, M-RoPE), each property against an independent reference."""
import numpy as np
import pytest
import torch

import vtr
from helpers import budget, forward_logits, generate_steps
from reference_qwen2_vl import eager_received_attention, oracle_forward, reference_topk, unpatched_positions
from vtr.testing import example_inputs, random_image, tiny_model
from vtr.testing.qwen2_vl import media_prompt, random_video

KINDS = ["image", "video"]
REDUCERS = ["fastervlm", "random"]
GRID_KEYS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


@pytest.fixture
def qwen():
    """A fresh tiny Qwen2-VL (random init) and its real Qwen2VLProcessor."""
    return tiny_model("qwen2_vl")


def batch_inputs(processor, kind, batch=2, seed=1):
    return example_inputs(processor, "qwen2_vl", kind, batch=batch, seed=seed)




def special_ids(model):
    c = model.config
    return [c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id]




def test_processor_and_config_ids_line_up(qwen):
    model, processor = qwen
    names = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    assert processor.tokenizer.convert_tokens_to_ids(names) == special_ids(model)
    for kind, type_id in (("image", 1), ("video", 2)):
        inputs = batch_inputs(processor, kind)
        token = special_ids(model)[type_id - 1]
        grids = inputs[GRID_KEYS[kind][1]]
        assert (inputs["input_ids"] == token).sum(1).tolist() == (grids.prod(-1) // 4).tolist()
        assert torch.equal(inputs["mm_token_type_ids"] == type_id, inputs["input_ids"] == token)
        assert 16 <= int(grids.prod(-1).min()) // 4 and int(grids[:, 1:].prod(-1).max()) // 4 <= 64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reducer", REDUCERS)
def test_keep_one_is_identity(qwen, kind, reducer):
    model, processor = qwen
    inputs = batch_inputs(processor, kind)
    ref_logits = forward_logits(model, inputs)
    ref_seq, ref_steps = generate_steps(model, inputs)
    with vtr.patched(model, reducer, keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref_logits)
        seq, steps = generate_steps(model, inputs)
        assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)


def test_unpatch_restores_bitwise(qwen):
    model, processor = qwen
    image, video = batch_inputs(processor, "image"), batch_inputs(processor, "video")
    before = [forward_logits(model, image), forward_logits(model, video)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    attrs, n_hooks = set(model.__dict__), hooks()
    vtr.patch(model, "fastervlm", keep=0.25)
    model(**image)
    model.generate(**video, max_new_tokens=2, do_sample=False)
    vtr.unpatch(model)
    assert set(model.__dict__) == attrs and hooks() == n_hooks and not hasattr(model, "vtr")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(forward_logits(model, image), before[0]) and torch.equal(forward_logits(model, video), before[1])


@pytest.mark.parametrize("kind,block", [("image", -1), ("video", -1), ("image", 0)])
def test_substitute_signal_keeps_topk_of_eager_received_attention(qwen, kind, block):
    model, processor = qwen
    inputs = batch_inputs(processor, kind)
    pixels, grids = GRID_KEYS[kind]
    scores = eager_received_attention(model, inputs[pixels], inputs[grids], block=block)
    vtr.patch(model, "fastervlm", keep=0.25)
    model.vtr.adapter.signal_block = block
    model(**inputs)
    stats = model.vtr.stats
    n_views = int(inputs[grids][:, 0].sum())  # one view per image, one per video frame group
    assert len(stats.views) == len(scores) == n_views
    for view, s in zip(stats.views, scores):
        assert view.grid[0] * view.grid[1] == s.numel()
        assert torch.equal(view.kept, reference_topk(s, budget(0.25, s.numel())))
    assert stats.adapted and any("received-attention substitute" in n and f"block {block}" in n for n in stats.notes)
    assert "(adapted)" in stats.summary()


def test_random_reducer_carries_no_substitute_note(qwen):
    model, processor = qwen
    vtr.patch(model, "random", keep=0.25)
    model(**batch_inputs(processor, "video"))
    assert model.vtr.stats.notes == [] and not model.vtr.stats.adapted


@pytest.mark.parametrize("kind", KINDS)
def test_patched_forward_equals_oracle_fed_kept_tokens(qwen, kind):
    """Logits and loss equal the unpatched model fed only the kept tokens at their original 3-D positions."""
    model, processor = qwen
    inputs = batch_inputs(processor, kind, batch=1, seed=2)
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"] != 0, -100)
    vtr.patch(model, "fastervlm", keep=0.25)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    kept = [v.kept for v in model.vtr.stats.views]
    assert model.vtr.stats.visual_tokens_out[0] < model.vtr.stats.visual_tokens_in[0]
    vtr.unpatch(model)
    ref = oracle_forward(model, inputs, kept, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_kept_tokens_keep_their_original_mrope_positions(qwen, kind):
    model, processor = qwen
    inputs = batch_inputs(processor, kind)
    full = unpatched_positions(model, inputs)  # (3, B, N)
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        vtr.patch(model, "fastervlm", keep=0.25)
        model(**inputs)
    finally:
        handle.remove()
    pos, columns = seen[0], model.vtr.stats.kept_columns
    for b, cols in enumerate(columns):  # entries of the re-padding are -1
        real = cols >= 0
        assert torch.equal(pos[:, b, real], full[:, b, cols[real]])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reducer", REDUCERS)
def test_batch_equals_single(qwen, kind, reducer):
    model, processor = qwen
    inputs = batch_inputs(processor, kind, seed=1)
    vtr.patch(model, reducer, keep=0.25)
    seq, steps = generate_steps(model, inputs)
    batch_views = model.vtr.stats.views
    prompt_len = inputs["input_ids"].shape[1]
    for b in range(2):
        single = batch_inputs(processor, kind, batch=1, seed=1 + b)
        row = inputs["attention_mask"][b].bool()
        assert torch.equal(single["input_ids"][0], inputs["input_ids"][b, row])  # exactly row b
        seq1, steps1 = generate_steps(model, single)
        mine = [v.kept for v in batch_views if v.sample == b]
        assert len(mine) == len(model.vtr.stats.views)
        assert all(torch.equal(a.kept, k) for a, k in zip(model.vtr.stats.views, mine))
        assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, prompt_len:])
        torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_generate_equals_no_cache_recompute(qwen, kind, batch):
    model, processor = qwen
    inputs = batch_inputs(processor, kind, batch=batch, seed=3)
    n = 5
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        vtr.patch(model, "fastervlm", keep=0.25)
        seq, steps = generate_steps(model, inputs, n=n)
        generate_positions = torch.cat(seen, dim=-1)  # (4, B, N' + n - 1): prefill, then each decode step
        seen.clear()
        prompt_len = inputs["input_ids"].shape[1]
        assert torch.equal(seq[:, :prompt_len], inputs["input_ids"])  # the caller's prompt first
        new = seq[:, prompt_len:-1]
        recompute = {**inputs, "input_ids": seq[:, :-1],
                     "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1),
                     "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1)}
        logits = forward_logits(model, recompute, use_cache=False)  # the patched forward numbers positions itself
    finally:
        handle.remove()
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)
    assert generate_positions.shape[0] == 4 and seen[0].shape[0] == 3
    assert torch.equal(generate_positions[1:], seen[0])  # generate's M-RoPE rows == the forward's own


def test_two_images_and_a_video_in_one_prompt(qwen):
    model, processor = qwen
    rng = np.random.default_rng(5)
    images, video = [random_image(rng), random_image(rng)], random_video(rng)
    two = processor(images=images, text=media_prompt("compare the two", ("image", "image")), return_tensors="pt")
    mixed = processor(images=images[:1], videos=[video], text=media_prompt("and now?", ("image", "video")),
                      return_tensors="pt")
    for inputs in (two, mixed):
        scores = eager_received_attention(model, inputs["pixel_values"], inputs["image_grid_thw"])
        if "video_grid_thw" in inputs:
            scores += eager_received_attention(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
        vtr.patch(model, "fastervlm", keep=0.25)
        seq = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model))
        stats = model.vtr.stats
        assert [v.sample for v in stats.views] == [0] * len(scores)
        assert all(torch.equal(v.kept, reference_topk(s, budget(0.25, s.numel()))) for v, s in zip(stats.views, scores))
        assert stats.visual_tokens_out == [sum(budget(0.25, s.numel()) for s in scores)]
        assert torch.equal(seq[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
        logits = forward_logits(model, inputs)
        kept = [v.kept for v in stats.views]
        vtr.unpatch(model)
        torch.testing.assert_close(logits, oracle_forward(model, inputs, kept).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16(qwen, kind):
    model, processor = qwen
    model.to(torch.bfloat16)
    inputs = batch_inputs(processor, kind)
    pixels, grids = GRID_KEYS[kind]
    inputs[pixels] = inputs[pixels].to(torch.bfloat16)
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    vtr.patch(model, "fastervlm", keep=0.25)
    seq = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model))
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 3
    # bf16 eager weights are rounded, so compare by score: every kept token scores at least the
    # k-th best reference score, up to bf16 rounding.
    scores = eager_received_attention(model, inputs[pixels], inputs[grids])
    for view, s in zip(model.vtr.stats.views, scores):
        threshold = s.topk(budget(0.25, s.numel())).values[-1]
        assert (s[view.kept] >= threshold - 2e-2 * threshold.abs()).all()
    vtr.unpatch(model)
    assert torch.equal(forward_logits(model, inputs), ref)


def test_clear_errors_leave_the_model_as_it_was(qwen):
    model, processor = qwen
    inputs = batch_inputs(processor, "image", batch=1)
    ref = forward_logits(model, inputs)
    with pytest.raises(ValueError, match=r"positions='renumber'.*allowed: original"):
        vtr.patch(model, "fastervlm", keep=0.25, positions="renumber")  # rejected at patch time
    assert not vtr.is_patched(model)
    vtr.patch(model, "fastervlm", keep=0.25)
    with pytest.raises(ValueError, match=r"positions='renumber'.*allowed: original"):
        model.vtr.config.positions = "renumber"  # a live edit is rejected at once (issue 18), the config unchanged
    assert model.vtr.config.positions == "original"
    pad = (inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0, 0]
    drop = torch.arange(inputs["input_ids"].shape[1]) != pad
    short = {k: (v[:, drop] if v.ndim == 2 and v.shape[1] == drop.numel() else v) for k, v in inputs.items()}
    with pytest.raises(ValueError, match="image placeholders"):
        model(**short)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
    with pytest.raises(ValueError, match="mm_token_type_ids must be 1 at image placeholders"):
        model(**{**inputs, "mm_token_type_ids": torch.zeros_like(inputs["mm_token_type_ids"])})
    with pytest.raises(ValueError, match="image_grid_thw"):
        model(**{k: v for k, v in inputs.items() if k != "image_grid_thw"})
    model.vtr.adapter.signal_block = 7
    with pytest.raises(ValueError, match="signal_block=7"):
        model(**inputs)
    vtr.unpatch(model)
    assert torch.equal(forward_logits(model, inputs), ref)


def test_text_only_call_passes_through(qwen):
    model, processor = qwen
    inputs = processor.tokenizer(["hello world"], return_tensors="pt")
    ref = forward_logits(model, inputs)
    vtr.patch(model, "fastervlm", keep=0.25)
    assert torch.equal(forward_logits(model, inputs), ref)
    assert model.vtr.stats.visual_tokens_in == [0]  # the same shape of stats for every reducer (issue 18)


def test_received_attention_is_exact_in_query_blocks(qwen):
    """Summing softmax rows block by block (bounded memory) gives the same scores as one block."""
    from vtr.adapters.qwen2_vl import ReceivedAttentionProbe

    model, processor = qwen
    inputs = batch_inputs(processor, "video")
    with ReceivedAttentionProbe(model.model.visual.blocks[-1].attn) as probe, torch.no_grad():
        model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    whole, blocked = probe.received_attention(2), probe.received_attention(2, max_elements=4 * 24)
    assert len(whole) == int(inputs["video_grid_thw"][:, 0].sum())
    for a, b in zip(whole, blocked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def packed(model, inputs):
    """The padded batch ``inputs`` as one padding-free row (transformers' packing): the real columns of every
    row side by side, ``(4, 1, N)`` position ids (text positions restarting at 0 per sequence, then the M-RoPE
    rows of the unpatched model's ``get_rope_index``), and no ``mm_token_type_ids`` (not needed with positions)."""
    mask = inputs["attention_mask"].bool()
    rope, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                         image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    text = torch.cat([torch.arange(n) for n in mask.sum(1).tolist()])
    return {"input_ids": inputs["input_ids"][mask][None], "pixel_values": inputs["pixel_values"],
            "image_grid_thw": inputs["image_grid_thw"],
            "position_ids": torch.cat([text[None], rope[:, mask]])[:, None, :]}


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_padding_free_packed_call_equals_padded_batch(qwen, keep):
    """Packed sequences with caller position ids (no mm_token_type_ids, as transformers' own padding-free test
    passes them) are reduced like the padded batch: each sequence's last logits equal the padded row's. The
    text positions are renumbered within each packed sequence, so dropped columns do not read as sequence starts."""
    model, processor = qwen
    inputs = batch_inputs(processor, "image", batch=2)
    vtr.patch(model, "fastervlm", keep=keep)
    padded = forward_logits(model, inputs, use_cache=False)[:, -1]
    image = (inputs["input_ids"] == model.config.image_token_id).sum(1)
    kept = torch.tensor([budget(keep, int(n)) for n in image])
    ends = (inputs["attention_mask"].sum(1) - image + kept).cumsum(0) - 1
    # use_cache=False: transformers reads packed sequences from the positions only without a cache
    packed_logits = forward_logits(model, packed(model, inputs), use_cache=False)[0]
    assert packed_logits.shape[0] == int(ends[-1]) + 1
    torch.testing.assert_close(packed_logits[ends], padded, rtol=1e-5, atol=1e-5)
