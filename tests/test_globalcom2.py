"""GlobalCom²: the per-crop ratio formula on hand-made examples, and every view's selection against a
reimplementation of the reference algorithm fed eager last-layer logits and an independently derived layout."""
import math

import pytest
import torch
import torch.nn.functional as F

import vtr
from test_fopru import eager_layer_attention
from test_llava_next import reference_layout, tower_crops
from vtr.reducers.globalcom2 import crop_retention
from vtr.testing import example_inputs, tiny_model

P, SIDE = 16, 4  # the tiny LLaVA-NeXT's 4x4 patch grid per view


def reference_ratios(thumbnail, grid, ratio, temperature):
    """The reference's generate_scale_for_crop_features, written as plain loops; row-major list per crop."""
    n_h, n_w = grid
    s_h, s_w = thumbnail.shape
    sums = [0.0] * (n_h * n_w)
    for i in range(s_h):
        for j in range(s_w):
            row, col = min(i // (s_h // n_h), n_h - 1), min(j // (s_w // n_w), n_w - 1)
            sums[row * n_w + col] += float(thumbnail[i, j])
    top = max(sums)
    e = [math.exp((g - top) / temperature) for g in sums]
    sigma = [x / sum(e) for x in e]
    mean = sum(sigma) / len(sigma)
    return [min(1.0, ratio * (1 + s - mean)) for s in sigma]


def test_crop_ratio_formula_by_hand():
    # Two crops side by side; the right half of the thumbnail scores 10 per cell: g = (0, 20).
    thumbnail = torch.tensor([[0.0, 10.0], [0.0, 10.0]])
    s = [math.exp(-2) / (1 + math.exp(-2)), 1 / (1 + math.exp(-2))]  # softmax((g - 20) / 10)
    expected = torch.tensor([[0.5 * (1 + s[0] - 0.5), 0.5 * (1 + s[1] - 0.5)]])  # 0.3096, 0.6904
    torch.testing.assert_close(crop_retention(thumbnail, (1, 2), 0.5, 10.0), expected)
    # A dominant crop is clipped at 1 (the others keep what the formula gives them).
    ratios = crop_retention(torch.tensor([[50.0, 0.0], [0.0, 0.0]]), (2, 2), 0.9, 1.0)
    assert ratios[0, 0] == 1.0 and torch.allclose(ratios[0, 1:], torch.tensor(0.9 * (1 - 0.25)), atol=1e-6)


@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (3, 1)])
def test_crop_ratio_formula_against_loops(grid):
    thumbnail = torch.randn(5, 7, generator=torch.Generator().manual_seed(sum(grid))) * 4
    for ratio, temperature in ((0.25, 10.0), (0.6, 0.5)):
        expected = torch.tensor(reference_ratios(thumbnail, grid, ratio, temperature)).view(grid)
        torch.testing.assert_close(crop_retention(thumbnail, grid, ratio, temperature), expected)


def last_layer_cls_logits(model, crops):
    """``(n_crops, P)`` head-mean pre-softmax [CLS]→patch logits of the last layer, from eager attention."""
    logits, _ = eager_layer_attention(model.model.vision_tower, lambda t: t.encoder.layers[-1].self_attn, crops,
                                      output_attentions=True)
    return logits[0][:, :, 0, 1:].mean(1)


def reference_selection(model, image_sizes, cls, ratio, temperature):
    """Per view (images in order, views with no surviving patch skipped), the kept patch indices.

    The layout comes from transformers' ``unpad_image`` on a grid of patch ids (tests/test_llava_next.py),
    not from the adapter: each crop's surviving rectangle and its place in the unpadded grid.
    """
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    config, kept, first = model.config, [], 0
    for size in image_sizes.tolist():
        sources, n_views = reference_layout(model, size)
        grid = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        thumbnail = cls[first].view(SIDE, SIDE)
        count = max(1, math.floor(P * ratio))
        kept.append(torch.topk(thumbnail.flatten(), count).indices.sort().values)
        ratios = reference_ratios(thumbnail, grid, ratio, temperature)
        big = sources[P:]
        stitched = big.view(int((big < 0).sum()), -1)[:, :-1]  # unpadded grid of patch ids, newlines removed
        guide = F.interpolate(thumbnail[None, None], size=tuple(stitched.shape), mode="bilinear",
                              align_corners=False)[0, 0]
        for v in range(1, n_views):
            where = (stitched // P == v).nonzero()
            if len(where) == 0:
                continue
            (r0, c0), (r1, c1) = where.min(0).values.tolist(), where.max(0).values.tolist()
            patches = stitched[r0:r1 + 1, c0:c1 + 1].flatten() % P
            local, global_ = cls[first + v][patches], guide[r0:r1 + 1, c0:c1 + 1].flatten()
            score = local / local.norm() + global_ / global_.norm()
            count = max(1, math.floor(len(patches) * ratios[v - 1]))
            kept.append(torch.topk(score, count).indices.sort().values)
        first += n_views
    return kept


@pytest.mark.parametrize("ratio, temperature", [(0.25, 10.0), (0.5, 0.05)])
def test_each_view_keeps_the_reference_selection(ratio, temperature):
    model, processor = tiny_model("llava_next")
    inputs = example_inputs(processor, "llava_next", batch=2, seed=1)
    cls = last_layer_cls_logits(model, tower_crops(model, inputs))
    expected = reference_selection(model, inputs["image_sizes"], cls, ratio, temperature)
    vtr.patch(model, "globalcom2", keep=ratio, temperature=temperature)
    model(**inputs)
    stats = model.vtr.stats
    assert len(stats.views) == len(expected)
    assert [v.kept.tolist() for v in stats.views] == [k.tolist() for k in expected]
    if temperature < 1:  # the thumbnail's guidance really moves the crops' budgets
        assert len({len(k) / (v.grid[0] * v.grid[1]) for k, v in zip(expected, stats.views)}) > 2


def test_score_order_reproduces_the_reference_thumbnail_order():
    model, processor = tiny_model("llava_next")
    inputs = example_inputs(processor, "llava_next", batch=1, seed=2)
    cls = last_layer_cls_logits(model, tower_crops(model, inputs))
    with torch.no_grad():
        packed = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0]
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    try:
        for order in ("spatial", "score"):
            with vtr.patched(model, "globalcom2", keep=0.5, thumbnail_order=order):
                with torch.no_grad():
                    model(**inputs)
                kept = model.vtr.stats.views[0].kept
                columns = model.vtr.stats.kept_columns[0]
    finally:
        hook.remove()
    image = inputs["input_ids"][0, columns] == model.config.image_token_id
    ranked = kept[torch.argsort(cls[0][kept], descending=True)]
    spatial, by_score = (embeds[0, image][:len(kept)] for embeds in seen)
    assert torch.equal(spatial, packed[kept]) and not torch.equal(kept, ranked)
    assert torch.equal(by_score, packed[ranked])  # same tokens, emitted in descending score order
    assert torch.equal(seen[0][0, image][len(kept):], seen[1][0, image][len(kept):])  # crops unchanged


def test_other_families_get_an_error_pointing_to_fastervlm(llava, inputs2):
    model, _ = llava
    with torch.no_grad():
        reference = model(**inputs2).logits
    with pytest.raises(ValueError, match="works on llava_next models, not 'llava'.*AnyRes.*'fastervlm'"):
        vtr.patch(model, "globalcom2")  # refused at patch time
    assert not vtr.is_patched(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs2).logits, reference)


def test_bad_options_are_rejected(llava):
    model, _ = llava
    with pytest.raises(TypeError, match="keep must be a float ratio"):
        vtr.patch(model, "globalcom2", keep=True)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        vtr.patch(model, "globalcom2", temperature=0)
    with pytest.raises(ValueError, match="thumbnail_order must be one of"):
        vtr.patch(model, "globalcom2", thumbnail_order="random")
    assert not vtr.is_patched(model)
