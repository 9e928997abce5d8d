"""LLaVA-OneVision: SigLIP (no [CLS]), AnyRes-max images (crops stitched, unpadded, shrunk), 2×2-pooled video.

The cross-family contracts (keep=1.0 identity, bitwise unpatch, batch-N == batch-1, prompt first) run on this
family in tests/test_families.py, fopru and pool in tests/test_prellm_reducers.py. References here: the
processor's own token arithmetic, eager SigLIP attention weights laid out by a slow obvious re-implementation
of unpad / shrink / pool, the unpatched model fed only the kept tokens, a no-cache recompute.
"""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vtr
from helpers import budget, check_implementation_and_dtype, forward_logits, generate_steps, special_ids
from reference import reference_topk
from vtr.testing import example_inputs, random_image, tiny_model

FAMILY = "llava_onevision"
SIDE = 5  # 70 px / patch 14


@pytest.fixture(scope="module")
def onevision():
    """One tiny LLaVA-OneVision for the module; every test leaves it unpatched and in fp32/SDPA."""
    model, processor = tiny_model(FAMILY)
    yield model, processor
    assert not vtr.is_patched(model)


def eager_received(model, pixels):
    """``(n, P)``: attention each patch receives at the last SigLIP layer (the feature layer, -1), from eager
    ``output_attentions`` weights: mean over heads and query patches."""
    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        out = tower(pixels, output_attentions=True)
    return out.attentions[-1].float().mean(1).mean(1)


def crops_used(model, inputs, image):
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    return image_size_to_num_patches(inputs["image_sizes"][image], model.config.image_grid_pinpoints, 70)


def stitched_reference(model, crop_scores, image_size, shrunk=False):
    """The crops' ``(n, 25)`` scores (base view first) laid out as the LLM's stitched grid, written out:
    crops in raster order into one grid, padding rows/columns cut, bilinear shrink above 1.1² × max tiles
    (``shrunk=True``: whether it shrinks)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

    rows, cols = get_anyres_image_grid_shape(image_size.tolist(), model.config.image_grid_pinpoints, 70)
    grid = crop_scores[1:].view(rows, cols, SIDE, SIDE).permute(0, 2, 1, 3).reshape(rows * SIDE, cols * SIDE)
    height, width = image_size.tolist()
    h, w = grid.shape
    if width / height > w / h:  # letterboxed top and bottom
        keep_h = int(round(height * (w / width), 7))
        pad = (h - keep_h) // 2
        grid = grid[pad:h - pad]
    else:
        keep_w = int(round(width * (h / height), 7))
        pad = (w - keep_w) // 2
        grid = grid[:, pad:w - pad]
    h, w = grid.shape
    ratio = math.sqrt(h * w / (int(model.config.vision_aspect_ratio.removeprefix("anyres_max_")) * SIDE * SIDE))
    if shrunk:
        return ratio > 1.1
    if ratio > 1.1:
        grid = F.interpolate(grid[None, None], [int(h // ratio), int(w // ratio)], mode="bilinear")[0, 0]
    return grid


def test_views_follow_the_processors_token_counts(onevision):
    """Each image: a 5×5 base view and one stitched view of the processor's own unpadded (and shrunk) size,
    whose rows × (cols + 1) newlines fill the rest of its placeholder run; some images are shrunk."""
    from transformers.image_processing_utils import select_best_resolution

    model, processor = onevision
    inputs = example_inputs(processor, FAMILY, "image", batch=3, seed=0)
    with vtr.patched(model, "random", keep=1.0):
        model(**inputs)
        stats = model.vtr.stats
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    shrunk = 0
    for b, size in enumerate(inputs["image_sizes"].tolist()):
        base, stitched = [v for v in stats.views if v.sample == b]
        assert base.grid == (SIDE, SIDE)
        rows, cols = stitched.grid
        assert counts[b] == SIDE * SIDE + rows * (cols + 1)
        best_h, best_w = select_best_resolution(size, processor.image_processor.image_grid_pinpoints)
        unpadded, newlines = processor._get_unpadded_features(*size, SIDE, SIDE, best_h // 70, best_w // 70)
        assert (rows, rows * cols) == (newlines, unpadded)
        shrunk += stitched_reference(model, torch.ones(crops_used(model, inputs, b), SIDE * SIDE),
                                     inputs["image_sizes"][b], shrunk=True)
    assert 1 <= shrunk < 3


@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_signal_is_topk_of_eager_received_attention_laid_out_like_the_features(onevision, keep):
    model, processor = onevision
    inputs = example_inputs(processor, FAMILY, "image+video", batch=3, seed=0)
    n_crops = [crops_used(model, inputs, b) for b in range(3)]
    image_scores = eager_received(model, torch.cat([inputs["pixel_values"][b, :n] for b, n in enumerate(n_crops)]))
    video_scores = eager_received(model, inputs["pixel_values_videos"].flatten(0, 1))
    expected, start = [], 0
    for b, n in enumerate(n_crops):
        crops = image_scores[start:start + n]
        start += n
        expected += [crops[0], stitched_reference(model, crops, inputs["image_sizes"][b]).flatten()]
    pooled = F.interpolate(video_scores.view(-1, 1, SIDE, SIDE), size=[3, 3], mode="bilinear")  # ceil(5 / 2)
    expected += list(pooled.flatten(1))
    with vtr.patched(model, "fastervlm", keep=keep):
        model(**inputs)
        stats = model.vtr.stats
    assert len(stats.views) == len(expected) == 3 * 2 + 3 * 8
    for view, s in zip(stats.views, expected):
        assert view.grid[0] * view.grid[1] == s.numel()
        assert torch.equal(view.kept, reference_topk(s, budget(keep, s.numel())))
    assert stats.adapted and any("llava_onevision" in n and "no [CLS]" in n for n in stats.notes)


def test_patched_forward_equals_oracle_fed_kept_tokens(onevision):
    """Logits and loss equal the unpatched model fed only the kept columns, with the unpatched packed features
    at those columns and the original positions; every image/video newline is among them."""
    model, processor = onevision
    inputs = example_inputs(processor, FAMILY, "image+video", batch=1, seed=2)
    ids = inputs["input_ids"]
    labels = ids.masked_fill((ids == model.config.image_token_id) | (ids == model.config.video_token_id), -100)
    with vtr.patched(model, "fastervlm", keep=0.25):
        with torch.no_grad():
            out = model(**inputs, labels=labels)
        stats = model.vtr.stats
    cols = stats.kept_columns[0]
    assert stats.visual_tokens_out[0] < stats.visual_tokens_in[0]
    with torch.no_grad():
        image = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
        video = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True)
    outputs = {}
    for name, token, packed, out_of in (("image", model.config.image_token_id, image.pooler_output[0], image),
                                        ("video", model.config.video_token_id, video.pooler_output[0], video)):
        run = (ids[0] == token).nonzero()[:, 0]
        kept_rows = torch.searchsorted(run, cols[torch.isin(cols, run)])
        newline = (packed == model.model.image_newline.to(packed)).all(-1).nonzero()[:, 0]
        assert torch.isin(newline, kept_rows).all() and len(newline) > 0
        out_of = copy.copy(out_of)
        out_of.pooler_output = [packed[kept_rows]] if name == "image" else packed[kept_rows][None]
        outputs[name] = out_of
    with torch.no_grad():
        ref = model(input_ids=ids[:, cols], attention_mask=inputs["attention_mask"][:, cols], position_ids=cols[None],
                    mm_encoder_outputs=outputs, labels=labels[:, cols])
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)


def test_cached_generate_equals_no_cache_recompute(onevision):
    model, processor = onevision
    inputs = example_inputs(processor, FAMILY, "image", batch=2, seed=3)
    n = 4
    with vtr.patched(model, "fastervlm", keep=0.25):
        seq, steps = generate_steps(model, inputs, n=n)
        prompt_len = inputs["input_ids"].shape[1]
        assert torch.equal(seq[:, :prompt_len], inputs["input_ids"])
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(seq[:, prompt_len:-1])], 1)
        recompute = {**inputs, "input_ids": seq[:, :-1], "attention_mask": mask,
                     "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)


def test_two_images_in_one_row_are_one_view_each(onevision):
    """Images of a multi-image row are not cropped (batch_num_images): one 5×5 view and one newline each."""
    model, processor = onevision
    rng = np.random.default_rng(4)
    inputs = processor(images=[[random_image(rng), random_image(rng)]], text="USER: <image><image>\ncompare ASSISTANT:",
                       return_tensors="pt")
    assert inputs["batch_num_images"].tolist() == [2]
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    with vtr.patched(model, "fastervlm", keep=0.2):
        seq = model.generate(**inputs, max_new_tokens=2, do_sample=False, suppress_tokens=special_ids(model))
        stats = model.vtr.stats
    assert [v.grid for v in stats.views] == [(SIDE, SIDE)] * 2
    assert stats.visual_tokens_in == [2 * 26] and stats.visual_tokens_out == [2 * (5 + 1)]
    assert torch.equal(seq[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("implementation, dtype", [("eager", torch.float32), ("sdpa", torch.bfloat16)])
def test_attention_implementations_and_bf16(implementation, dtype):
    check_implementation_and_dtype(FAMILY, "image+video", implementation, dtype)


def test_refusals_are_clear_and_leave_the_model_alone(onevision):
    model, processor = onevision
    inputs = example_inputs(processor, FAMILY, "image", batch=1)
    ref = forward_logits(model, inputs)
    for reducer, pattern in (("vtc_cls", r"'vtc_cls' works on .* not 'llava_onevision'"),
                             ("globalcom2", r"'globalcom2' works on llava_next models, not 'llava_onevision'"),
                             ("quota", r"'quota' works on .* not 'llava_onevision'")):
        with pytest.raises(ValueError, match=pattern):
            vtr.patch(model, reducer)
        assert not vtr.is_patched(model)
    with vtr.patched(model, "fastervlm", keep=0.25):
        with pytest.raises(ValueError, match=r"vision_feature_select_strategy='default'.*allowed: 'full'"):
            model(**inputs, vision_feature_select_strategy="default")
        with pytest.raises(ValueError, match="image_sizes"):
            model(**{k: v for k, v in inputs.items() if k != "image_sizes"})
    assert torch.equal(forward_logits(model, inputs), ref)


def test_overlays_draw_every_view(onevision):
    """Each view gets a picture: the base tile, the stitched crops with the letterbox cut (its aspect ratio
    that of the view's grid, up to rounding), each video frame."""
    from vtr.media.overlay import call_overlays

    model, processor = onevision
    inputs = example_inputs(processor, FAMILY, "image+video", batch=1, seed=0)
    with vtr.patched(model, "fastervlm", keep=0.25):
        model(**inputs)
        views = model.vtr.stats.views
        pictures, titles = call_overlays(model, inputs, processor)
    assert len(pictures) == len(views) == 2 + 8
    (rows, cols), (width, height) = views[1].grid, pictures[1].size
    assert abs(width / height - cols / rows) < 0.15 * cols / rows
