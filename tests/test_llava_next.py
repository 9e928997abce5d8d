"""Property suite for LLaVA-NeXT (AnyRes, spatial_unpad), each property checked against an independent reference.

The references re-derive the packed layout here, from transformers' ``unpad_image`` applied to a grid
of (view, patch) ids stitched the way AnyRes stitches crops, and score views with eager attention
on a copy of the tower; neither uses the adapter's packing map or vtr's selection code.
"""
import numpy as np
import pytest
import torch

import vtr
from helpers import forward_logits, generate_steps
from reference import eager_cls_attention, reference_topk
from vtr.testing import chat_prompt, example_inputs, random_image, tiny_model

REDUCERS = ["fastervlm", "random"]
FAMILY = "llava_next"


@pytest.fixture
def next_model():
    """A fresh tiny LLaVA-NeXT (56 px views, 4×4 patches, pinpoints 1×2 / 2×1 / 2×2) and its processor."""
    return tiny_model(FAMILY)


@pytest.fixture
def next_inputs2(next_model):
    """Two left-padded rows: a tall image (3 views) and an oblong one (5 views), both unpadded."""
    return example_inputs(next_model[1], FAMILY, batch=2, seed=1)


# -- independent references ---------------------------------------------------------------------
def reference_layout(model, image_size):
    """Packed source of every row of one image, and its view count.

    Returns ``(sources (L,), n_views)``: ``view * P + patch`` per packed row (view 0 = base), -1 for
    an ``image_newline`` row.
    """
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    config = model.config
    size = config.vision_config.image_size
    side = size // config.vision_config.patch_size
    n_patches = side * side
    rows_of_crops, cols_of_crops = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, size)
    y, x = torch.meshgrid(torch.arange(rows_of_crops * side), torch.arange(cols_of_crops * side), indexing="ij")
    crop = 1 + (y // side) * cols_of_crops + x // side
    ids = crop * n_patches + (y % side) * side + x % side  # the crops stitched into one big grid
    kept = unpad_image(ids[None], list(image_size))[0]
    with_newlines = torch.cat([kept, torch.full((kept.shape[0], 1), -1)], dim=1).flatten()
    return torch.cat([torch.arange(n_patches), with_newlines]), 1 + rows_of_crops * cols_of_crops


def reference_views(model, image_sizes):
    """Per view (images in order, views with no surviving patch skipped):
    ``(image, view index in the image, tower crop index, sorted surviving patch ids)``."""
    n_patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    views, first = [], 0
    for image, size in enumerate(image_sizes.tolist()):
        sources, n_views = reference_layout(model, size)
        for v in range(n_views):
            patches = (sources[(sources >= 0) & (sources // n_patches == v)] % n_patches).sort().values
            if len(patches):
                views.append((image, v, first + v, patches))
        first += n_views
    return views


def tower_crops(model, inputs):
    """``(total views, 3, s, s)``: every image's real views, padding views dropped (as the model does)."""
    counts = [reference_layout(model, size)[1] for size in inputs["image_sizes"].tolist()]
    return torch.cat([pv[:n] for pv, n in zip(inputs["pixel_values"], counts)])


def ratio_count(keep, n):
    return max(1, min(n, int(np.floor(keep * n + 0.5))))






# -- properties ---------------------------------------------------------------------------------
def test_example_rows_differ_and_are_unpadded(next_model, next_inputs2):
    """The fixture exercises what matters: different view counts, packed lengths, and unpadding."""
    model, _ = next_model
    layouts = [reference_layout(model, s) for s in next_inputs2["image_sizes"].tolist()]
    counts = (next_inputs2["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert counts == [len(src) for src, _ in layouts] and counts[0] != counts[1]
    assert layouts[0][1] != layouts[1][1]
    assert all((src >= 0).sum() < 16 * n_views for src, n_views in layouts)  # unpadding dropped patches


@pytest.mark.parametrize("reducer", REDUCERS)
def test_keep_one_is_identity(next_model, next_inputs2, reducer):
    model, _ = next_model
    ref_logits = forward_logits(model, next_inputs2)
    ref_seq, ref_steps = generate_steps(model, next_inputs2)
    for positions in ("original", "renumber"):
        with vtr.patched(model, reducer, keep=1.0, positions=positions):
            assert torch.equal(forward_logits(model, next_inputs2), ref_logits)
            seq, steps = generate_steps(model, next_inputs2)
            assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)


def test_unpatch_restores_bitwise(next_model, next_inputs2):
    model, _ = next_model
    before = forward_logits(model, next_inputs2)
    attrs = set(model.__dict__)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    vtr.patch(model, "fastervlm", keep=0.25)
    model(**next_inputs2)
    model.generate(**next_inputs2, max_new_tokens=2, do_sample=False)
    vtr.unpatch(model)
    assert set(model.__dict__) == attrs and not hasattr(model, "vtr")
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert torch.equal(forward_logits(model, next_inputs2), before)


@pytest.mark.parametrize("keep", [0.25, 3])
def test_fastervlm_keeps_topk_of_eager_cls_attention_per_surviving_view(next_model, next_inputs2, keep):
    model, _ = next_model
    scores = eager_cls_attention(model, tower_crops(model, next_inputs2), layer=-2)  # (total views, 16)
    views = reference_views(model, next_inputs2["image_sizes"])
    vtr.patch(model, "fastervlm", keep=keep)
    model(**next_inputs2)
    stats = model.vtr.stats
    assert len(stats.views) == len(views)
    for record, (_, _, crop, patches) in zip(stats.views, views):
        k = ratio_count(keep, len(patches)) if isinstance(keep, float) else min(keep, len(patches))
        assert record.grid[0] * record.grid[1] == len(patches)
        assert torch.equal(record.kept, reference_topk(scores[crop][patches], k))


def test_fastervlm_follows_the_feature_layer(next_model, next_inputs2):
    model, _ = next_model
    scores = eager_cls_attention(model, tower_crops(model, next_inputs2), layer=-3)
    vtr.patch(model, "fastervlm", keep=0.25)
    model(**next_inputs2, vision_feature_layer=-3)
    views = reference_views(model, next_inputs2["image_sizes"])
    for record, (_, _, crop, patches) in zip(model.vtr.stats.views, views):
        assert torch.equal(record.kept, reference_topk(scores[crop][patches], ratio_count(0.25, len(patches))))


def test_crops_removed_entirely_by_unpadding_have_no_view():
    """A 3×1 pinpoint and a square image: unpadding removes the top and bottom crops whole."""
    model, processor = tiny_model(FAMILY, image_grid_pinpoints=[[168, 56]])
    image = random_image(np.random.default_rng(0), 120, 200).resize((100, 100))
    inputs = processor(images=image, text=chat_prompt("what is in the image?"), return_tensors="pt")
    views = reference_views(model, inputs["image_sizes"])
    assert [v[1] for v in views] == [0, 2]  # base view and the middle crop only
    ref = forward_logits(model, inputs)
    scores = eager_cls_attention(model, tower_crops(model, inputs), layer=-2)
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    vtr.patch(model, "fastervlm", keep=0.25)
    model(**inputs)
    stats = model.vtr.stats
    assert [r.grid for r in stats.views] == [(4, 4), (4, 4)]
    for record, (_, _, crop, patches) in zip(stats.views, views):
        assert torch.equal(record.kept, reference_topk(scores[crop][patches], 4))
    assert stats.visual_tokens_in == [36] and stats.visual_tokens_out == [4 + 4 + 4]  # + 4 newlines


def test_image_newlines_are_all_kept_and_features_are_the_kept_rows(next_model, next_inputs2):
    """What enters the LLM is the unpatched packed features at the kept rows, every newline included."""
    model, _ = next_model
    with torch.no_grad():
        full = model.model.get_image_features(next_inputs2["pixel_values"], next_inputs2["image_sizes"]).pooler_output
    views = reference_views(model, next_inputs2["image_sizes"])
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("embeds", kw["inputs_embeds"]), with_kwargs=True)
    try:
        vtr.patch(model, "fastervlm", keep=0.25)
        model(**next_inputs2)
    finally:
        hook.remove()
    stats, n_patches = model.vtr.stats, 16
    kept_ids = [set() for _ in full]  # per image, the (view * P + patch) ids kept
    for record, (image, view, _, patches) in zip(stats.views, views):
        kept_ids[image] |= {view * n_patches + int(patches[i]) for i in record.kept}
    width = seen["embeds"].shape[1]
    for b, size in enumerate(next_inputs2["image_sizes"].tolist()):
        sources = reference_layout(model, size)[0].tolist()
        kept_rows = [r for r, src in enumerate(sources) if src < 0 or src in kept_ids[b]]
        cols = stats.kept_columns[b]
        row_embeds = seen["embeds"][b, width - len(cols):]  # rows are left-padded
        is_image = next_inputs2["input_ids"][b, cols] == model.config.image_token_id
        assert stats.visual_tokens_out[b] == len(kept_rows) == int(is_image.sum())
        assert torch.equal(row_embeds[is_image], full[b][kept_rows])
        n_newlines = sum(src < 0 for src in sources)
        assert n_newlines > 0 and int((row_embeds[is_image] == model.model.image_newline).all(-1).sum()) == n_newlines


def test_stats_report_per_view_tokens(next_model, next_inputs2):
    model, _ = next_model
    vtr.patch(model, "fastervlm", keep=0.5)
    model(**next_inputs2)
    stats = model.vtr.stats
    views = reference_views(model, next_inputs2["image_sizes"])
    layouts = [reference_layout(model, s)[0] for s in next_inputs2["image_sizes"].tolist()]
    assert [r.grid[0] * r.grid[1] for r in stats.views] == [len(p) for *_, p in views]  # tokens in, per view
    assert [len(r.kept) for r in stats.views] == [ratio_count(0.5, len(p)) for *_, p in views]  # tokens out
    assert stats.visual_tokens_in == [len(src) for src in layouts]
    for b, src in enumerate(layouts):
        kept_patches = sum(len(r.kept) for r in stats.views if r.sample == b)
        assert stats.visual_tokens_out[b] == kept_patches + int((src < 0).sum())
    assert stats.adapted and any("spatial_unpad" in n for n in stats.notes)


@pytest.mark.parametrize("reducer", REDUCERS)
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_batch_equals_single(next_model, next_inputs2, reducer, positions):
    model, processor = next_model
    vtr.patch(model, reducer, keep=0.25, positions=positions)
    seq, steps = generate_steps(model, next_inputs2)
    batch_views = model.vtr.stats.views
    prompt_len = next_inputs2["input_ids"].shape[1]
    for b in range(2):
        single = example_inputs(processor, FAMILY, batch=1, seed=1 + b)
        row = next_inputs2["attention_mask"][b].bool()
        assert torch.equal(single["input_ids"][0], next_inputs2["input_ids"][b, row])
        seq1, steps1 = generate_steps(model, single)
        mine = [v for v in batch_views if v.sample == b]
        assert [v.kept.tolist() for v in model.vtr.stats.views] == [v.kept.tolist() for v in mine]
        assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, prompt_len:])
        torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions", ["original", "renumber"])
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_generate_equals_no_cache_recompute(next_model, positions, batch):
    model, processor = next_model
    inputs = example_inputs(processor, FAMILY, batch=batch, seed=3)
    vtr.patch(model, "fastervlm", keep=0.25, positions=positions)
    seq, steps = generate_steps(model, inputs, n=5)
    n = inputs["input_ids"].shape[1]
    assert torch.equal(seq[:, :n], inputs["input_ids"])  # caller's prompt first
    full_mask = torch.cat([inputs["attention_mask"], torch.ones_like(seq[:, n:])], 1)
    recompute = {"input_ids": seq[:, :-1], "attention_mask": full_mask[:, :-1],
                 "pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]}
    if positions == "original":  # generate numbers from the mask; give the no-cache pass the same numbering
        recompute["position_ids"] = (full_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
    logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -5:], steps, rtol=0, atol=1e-5)


def test_two_images_in_one_prompt(next_model):
    model, processor = next_model
    rng = np.random.default_rng(7)
    images = [random_image(rng, 120, 200).resize((250, 60)), random_image(rng, 120, 200).resize((80, 120))]
    inputs = processor(images=images, text=chat_prompt("compare <image> with", "<image>"), return_tensors="pt")
    scores = eager_cls_attention(model, tower_crops(model, inputs), layer=-2)
    views = reference_views(model, inputs["image_sizes"])
    vtr.patch(model, "fastervlm", keep=0.25)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[model.config.image_token_id])
    stats = model.vtr.stats
    assert {v.sample for v in stats.views} == {0} and len(stats.views) == len(views)
    for record, (_, _, crop, patches) in zip(stats.views, views):
        assert torch.equal(record.kept, reference_topk(scores[crop][patches], ratio_count(0.25, len(patches))))
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("reducer", REDUCERS)
def test_bf16(next_model, next_inputs2, reducer):
    model, _ = next_model
    model.to(torch.bfloat16)
    inputs = {**next_inputs2, "pixel_values": next_inputs2["pixel_values"].to(torch.bfloat16)}
    ref = forward_logits(model, inputs)
    with vtr.patched(model, reducer, keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    vtr.patch(model, reducer, keep=0.25)
    seq = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[model.config.image_token_id])
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 3
    if reducer == "fastervlm":  # bf16 rounding: every kept patch scores at least the k-th best, up to rounding
        scores = eager_cls_attention(model, tower_crops(model, inputs), layer=-2)
        for record, (_, _, crop, patches) in zip(model.vtr.stats.views, reference_views(model, inputs["image_sizes"])):
            s = scores[crop][patches]
            threshold = s.topk(ratio_count(0.25, len(patches))).values[-1]
            assert (s[record.kept] >= threshold - 2e-2 * threshold.abs()).all()
    vtr.unpatch(model)
    assert torch.equal(forward_logits(model, inputs), ref)


# -- clear errors ---------------------------------------------------------------------------------
def test_video_input_is_rejected(next_model, next_inputs2):
    model, _ = next_model
    vtr.patch(model, "fastervlm", keep=0.25)
    videos = torch.zeros(2, 4, 3, 56, 56)
    for call in (model, model.generate):
        with pytest.raises(ValueError, match="pixel_values_videos.*images only"):
            call(**next_inputs2, pixel_values_videos=videos)


def test_mismatched_placeholders_are_rejected(next_model, next_inputs2):
    model, _ = next_model
    vtr.patch(model, "fastervlm", keep=0.25)
    image = next_inputs2["input_ids"] == model.config.image_token_id
    drop = int(image[0].nonzero()[0])  # remove one placeholder from the first row
    short = {**next_inputs2, "input_ids": torch.cat([next_inputs2["input_ids"][:, :drop],
                                                     next_inputs2["input_ids"][:, drop + 1:]], 1),
             "attention_mask": next_inputs2["attention_mask"][:, 1:]}
    with pytest.raises(ValueError, match="input_ids hold .* image placeholders"):
        model(**short)
    with pytest.raises(ValueError, match="image_sizes"):
        model(**{k: v for k, v in next_inputs2.items() if k != "image_sizes"})
    with pytest.raises(ValueError, match="vision_feature_select_strategy='full'"):
        model(**next_inputs2, vision_feature_select_strategy="full")
    model(**next_inputs2)  # the model still works after rejected calls
    counts = (next_inputs2["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert model.vtr.stats.visual_tokens_in == counts
