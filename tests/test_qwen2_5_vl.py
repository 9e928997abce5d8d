"""Qwen2.5-VL: what its windowed tower and absolute-time M-RoPE add to the Qwen2-VL properties.

The cross-family contracts (keep=1.0 identity for every identity-capable reducer, bitwise unpatch, batch-N ==
batch-1, prompt first) run on this family in tests/test_families.py, fopru and pool in
tests/test_prellm_reducers.py. References here: the tower's own eager attention weights put back in raster
order with the model's own window index, the unpatched model fed only the kept tokens, a no-cache recompute.
"""
import pytest
import torch

import vtr
from helpers import budget, check_implementation_and_dtype, forward_logits, generate_steps, special_ids
from reference_qwen2_vl import eager_received_attention, oracle_forward, reference_topk, unpatched_positions
from vtr.testing import example_inputs, tiny_model

FAMILY = "qwen2_5_vl"
KINDS = ["image", "video"]
GRID_KEYS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


@pytest.fixture(scope="module")
def qwen():
    """One tiny Qwen2.5-VL for the module; every test leaves it unpatched and in fp32/SDPA."""
    model, processor = tiny_model(FAMILY)
    yield model, processor
    assert not vtr.is_patched(model)


def batch_inputs(processor, kind, batch=2, seed=1):
    return example_inputs(processor, FAMILY, kind, batch=batch, seed=seed)


def raster_received_attention(model, pixels, grid_thw, block):
    """Attention received per merged token in vision block ``block``, in raster order: the eager reference's
    per-chunk scores (in the tower's window order) reordered for the whole call with ``argsort(window_index)``,
    as the tower reorders its merger output."""
    from transformers.vision_utils import get_vision_window_index

    windowed = eager_received_attention(model, pixels, grid_thw, block=block)
    vision = model.config.vision_config
    window_index, _ = get_vision_window_index(grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    flat = torch.cat(windowed)[torch.argsort(window_index)]
    return list(flat.split([s.numel() for s in windowed]))


def test_tiny_model_exercises_windows_and_absolute_time(qwen):
    """The references below are only meaningful if windows split the images and time spaces the frame groups."""
    model, processor = qwen
    vision = model.config.vision_config
    assert list(vision.fullatt_block_indexes) == [1, 3] and len(model.model.visual.blocks) == 4
    image = batch_inputs(processor, "image")
    cells = vision.window_size // vision.patch_size // vision.spatial_merge_size
    assert (image["image_grid_thw"][:, 1:] // vision.spatial_merge_size > cells).any()  # several windows per image
    video = batch_inputs(processor, "video")
    assert torch.equal(video["second_per_grid_ts"], torch.tensor([2.0, 2.0]))
    t = unpatched_positions(model, video)[0]  # temporal row, (B, N)
    for b, groups in enumerate(video["video_grid_thw"][:, 0].tolist()):
        first = t[b, video["mm_token_type_ids"][b] == 2].unique() - t[b, video["mm_token_type_ids"][b] == 2].min()
        assert first.tolist() == [4 * g for g in range(groups)]  # tokens_per_second 2 x 2 s per group


@pytest.mark.parametrize("kind,block", [("image", None), ("video", None), ("image", 1)])
def test_signal_is_topk_of_eager_full_attention_in_raster_order(qwen, kind, block):
    model, processor = qwen
    inputs = batch_inputs(processor, kind)
    pixels, grids = GRID_KEYS[kind]
    scores = raster_received_attention(model, inputs[pixels], inputs[grids], 3 if block is None else block)
    with vtr.patched(model, "fastervlm", keep=0.25):
        model.vtr.adapter.signal_block = block
        model(**inputs)
        stats = model.vtr.stats
    assert len(stats.views) == len(scores) == int(inputs[grids][:, 0].sum())
    for view, s in zip(stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, budget(0.25, s.numel())))
    expected = f"full-attention vision block {3 if block is None else block}"
    assert stats.adapted and any("qwen2_5_vl" in n and expected in n for n in stats.notes), stats.notes
    assert not any("on qwen2_vl" in n for n in stats.notes)


def test_windowed_signal_block_is_refused(qwen):
    model, processor = qwen
    inputs = batch_inputs(processor, "image", batch=1)
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "fastervlm", keep=0.25):
        for block in (0, 2, -2, 9):
            model.vtr.adapter.signal_block = block
            with pytest.raises(ValueError, match=rf"signal_block={block} is not a full-attention block.*allowed: 1, 3"):
                model(**inputs)
        model.vtr.adapter.signal_block = -1  # the last block, full attention
        model(**inputs)
    assert torch.equal(forward_logits(model, inputs), ref)


def test_tower_without_full_attention_blocks_reads_its_last_windowed_block():
    """transformers' own tiny Qwen2.5-VL test configs keep the default ``fullatt_block_indexes`` [7, 15, 23, 31]
    with a 2-block tower, so no block attends globally. Such a model is patched like any other: identical to the
    unpatched one at keep=1.0, and ranked by the received attention of its last (windowed) block, per window,
    put back in raster order (the reference: the tower's own eager weights per window, reordered for the whole
    call with the model's window index, split per image)."""
    from transformers.vision_utils import get_vision_window_index

    model, processor = tiny_model(FAMILY, vision={"fullatt_block_indexes": [7, 15, 23, 31]})
    inputs = batch_inputs(processor, "image")
    vision = model.config.vision_config
    grid = inputs["image_grid_thw"]
    cells = vision.window_size // vision.patch_size // vision.spatial_merge_size
    assert (grid[:, 1:] // vision.spatial_merge_size > cells).any()  # several windows per image
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)

    windowed = eager_received_attention(model, inputs["pixel_values"], grid, block=3)
    window_index, _ = get_vision_window_index(grid, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    flat = torch.cat(windowed)[torch.argsort(window_index)]
    scores = flat.split((grid.prod(dim=-1) // vision.spatial_merge_size ** 2).tolist())
    with vtr.patched(model, "fastervlm", keep=0.25):
        model(**inputs)
        stats = model.vtr.stats
    assert len(stats.views) == len(scores)
    for view, s in zip(stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, budget(0.25, s.numel())))
    assert any("windowed vision block 3" in n for n in stats.notes), stats.notes
    assert torch.equal(forward_logits(model, inputs), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_patched_forward_equals_oracle_fed_kept_tokens(qwen, kind):
    """Logits and loss equal the unpatched model fed only the kept tokens at their original (absolute-time) positions."""
    model, processor = qwen
    inputs = batch_inputs(processor, kind, batch=1, seed=2)
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"] != 0, -100)
    with vtr.patched(model, "fastervlm", keep=0.25):
        with torch.no_grad():
            out = model(**inputs, labels=labels)
        kept = [v.kept for v in model.vtr.stats.views]
    ref = oracle_forward(model, inputs, kept, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)


def test_kept_video_tokens_keep_their_absolute_time_positions(qwen):
    model, processor = qwen
    inputs = batch_inputs(processor, "video")
    full = unpatched_positions(model, inputs)  # (3, B, N)
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        with vtr.patched(model, "random", keep=0.25):
            model(**inputs)
            columns = model.vtr.stats.kept_columns
    finally:
        handle.remove()
    for b, cols in enumerate(columns):  # entries of the re-padding are -1
        real = cols >= 0
        assert torch.equal(seen[0][:, b, real], full[:, b, cols[real]])


@pytest.mark.parametrize("kind", KINDS)
def test_cached_generate_equals_no_cache_recompute(qwen, kind):
    model, processor = qwen
    inputs = batch_inputs(processor, kind, batch=2, seed=3)
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


@pytest.mark.parametrize("implementation, dtype", [("eager", torch.float32), ("sdpa", torch.bfloat16)])
def test_attention_implementations_and_bf16(implementation, dtype):
    """keep=1.0 is the identity (eager fp32, SDPA bf16), and a reduced generate runs."""
    model, stats = check_implementation_and_dtype(FAMILY, "video", implementation, dtype)
    assert model.config.text_config._attn_implementation == implementation
    assert stats.visual_tokens_out < stats.visual_tokens_in


def test_reducers_that_need_a_cls_token_are_refused(qwen):
    model, _ = qwen
    with pytest.raises(ValueError, match=r"'vtc_cls' works on .* not 'qwen2_5_vl'"):
        vtr.patch(model, "vtc_cls", keep=0.25)
    with pytest.raises(ValueError, match=r"'globalcom2' works on llava_next models, not 'qwen2_5_vl'"):
        vtr.patch(model, "globalcom2", keep=0.25)
    assert not vtr.is_patched(model)


def test_quota_runs_on_video_with_the_self_scorer(qwen):
    """QuoTA shows the LLM single frame groups (view_inputs with their own M-RoPE grid): keep=1.0 with uniform
    scores is the identity, and a reduced cached generate equals the uncached one."""
    import numpy as np

    model, processor = qwen
    inputs = batch_inputs(processor, "video")
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "quota", keep=1.0, scorer=lambda frames, q: np.ones(len(frames)), question="q"):
        assert torch.equal(forward_logits(model, inputs), ref)
    with vtr.patched(model, "quota", keep=0.25, processor=processor, decouple_tokens=6):
        seq, steps = generate_steps(model, inputs, n=3)
        scores = [r.scores for r in vtr.reducers.quota.assignments(model)]
        assert len(scores) == 2 and all(s is not None and len(s) == t for s, t in
                                        zip(scores, inputs["video_grid_thw"][:, 0].tolist()))
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=special_ids(model), use_cache=False)
        assert torch.equal(out.sequences, seq)
        torch.testing.assert_close(torch.stack(out.logits, dim=1), steps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_visual_inputs_without_token_types_run_as_unpatched(qwen, keep):
    """Unlike Qwen2-VL, the unpatched Qwen2.5-VL runs a call with pixels but no mm_token_type_ids, numbering the
    columns as text (no M-RoPE): the patched model does the same — keep=1.0 equals it (forward and generate);
    at keep 0.5 the kept columns keep those positions (the call with them passed explicitly)."""
    model, processor = qwen
    inputs = {k: v for k, v in batch_inputs(processor, "image").items() if k != "mm_token_type_ids"}
    batch, width = inputs["input_ids"].shape
    model.model.rope_deltas = None
    reference = forward_logits(model, inputs)
    reference_seq, _ = generate_steps(model, inputs, n=3)
    with vtr.patched(model, "fastervlm", keep=keep):
        logits = forward_logits(model, inputs)
        sequences, _ = generate_steps(model, inputs, n=3)
        if keep == 1.0:
            torch.testing.assert_close(logits, reference, rtol=0, atol=0)
            assert torch.equal(sequences, reference_seq)
        else:
            assert logits.shape[1] < width
            explicit = torch.arange(width).view(1, 1, -1).expand(3, batch, -1)
            torch.testing.assert_close(forward_logits(model, {**inputs, "position_ids": explicit}), logits,
                                       rtol=0, atol=1e-6)
