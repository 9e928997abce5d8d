"""Pooling baseline: the grid math, and the features that reach the LLM against torch's avg_pool2d and
a plain loop over the pooling cells, on every family."""
import math

import pytest
import torch
import torch.nn.functional as F

import vtr
from test_llava_next import reference_layout
from vtr.ops.grid import cell_anchors, pooled_shape
from vtr.testing import example_inputs, tiny_model


def cells(size, n):
    """Adaptive-pooling cell bounds, written out: [floor(i·size/n), ceil((i+1)·size/n))."""
    return [(math.floor(i * size / n), math.ceil((i + 1) * size / n)) for i in range(n)]


def loop_pool(features, grid, out):
    """``(h·w, D)`` → ``(h'·w', D)`` cell means and ``(h'·w',)`` centre anchors, one cell at a time."""
    h, w = grid
    image = features.view(h, w, -1)
    pooled, anchors = [], []
    for r0, r1 in cells(h, out[0]):
        for c0, c1 in cells(w, out[1]):
            pooled.append(image[r0:r1, c0:c1].float().mean((0, 1)))
            anchors.append(((r0 + r1 - 1) // 2) * w + (c0 + c1 - 1) // 2)
    return torch.stack(pooled).to(features.dtype), torch.tensor(anchors)


def llm_visual_input(model, inputs, reducer_kwargs):
    """The patched model's LLM input rows at visual placeholders, per batch row, and its stats."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"]), with_kwargs=True)
    try:
        with vtr.patched(model, "pool", **reducer_kwargs):
            with torch.no_grad():
                model(**inputs)
            stats = model.vtr.stats
    finally:
        hook.remove()
    embeds, rows = seen["embeds"], []
    for b, columns in enumerate(stats.kept_columns):
        ids = inputs["input_ids"][b, columns.clamp(min=0)]
        visual = torch.isin(ids, torch.tensor([model.config.image_token_id,
                                               getattr(model.config, "video_token_id", -1) or -1]))
        rows.append(embeds[b, (columns >= 0) & visual])
    return rows, stats


@pytest.mark.parametrize("grid, budget, expected", [
    ((24, 24), 144, (12, 12)), ((24, 24), 58, (7, 8)), ((24, 24), 576, (24, 24)), ((24, 24), 1, (1, 1)),
    ((4, 2), 2, (2, 1)), ((1, 10), 3, (1, 3)), ((7, 8), 14, (3, 4)), ((16, 16), 26, (5, 5)),
])
def test_pooled_shape(grid, budget, expected):
    assert pooled_shape(grid, budget) == expected
    anchors = cell_anchors(grid, expected)
    assert len(anchors) == expected[0] * expected[1] <= max(budget, 1)
    assert (anchors.diff() > 0).all() and anchors.max() < grid[0] * grid[1]


def test_llava_features_equal_avg_pool2d_at_centre_slots(llava, inputs2):
    model, _ = llava
    with torch.no_grad():
        full = model.model.get_image_features(pixel_values=inputs2["pixel_values"]).pooler_output
    rows, stats = llm_visual_input(model, inputs2, {"keep": 0.25})
    for b, features in enumerate(full):
        grid = features.T.reshape(1, -1, 24, 24)
        expected = F.avg_pool2d(grid, 2)[0].flatten(1).T  # 12x12 cells of 2x2 patches
        torch.testing.assert_close(rows[b], expected, rtol=0, atol=1e-6)
        assert torch.equal(stats.views[b].kept, torch.tensor([48 * i + 2 * j for i in range(12) for j in range(12)]))
    assert stats.visual_tokens_out == [144, 144]


def test_uneven_cells_and_original_positions(llava, inputs2):
    """58 tokens: a 7x8 grid of overlapping cells; each pooled token sits at its cell's centre patch."""
    model, _ = llava
    with torch.no_grad():
        full = model.model.get_image_features(pixel_values=inputs2["pixel_values"]).pooler_output
    positions = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: positions.update(ids=kw["position_ids"]), with_kwargs=True)
    try:
        rows, stats = llm_visual_input(model, inputs2, {"keep": 58})
    finally:
        hook.remove()
    for b, features in enumerate(full):
        expected, anchors = loop_pool(features, (24, 24), (7, 8))
        torch.testing.assert_close(rows[b], expected, rtol=0, atol=1e-6)
        assert torch.equal(stats.views[b].kept, anchors)
        first_image = int((inputs2["input_ids"][b] == model.config.image_token_id).nonzero()[0])
        columns = stats.kept_columns[b]
        image = (inputs2["input_ids"][b, columns.clamp(min=0)] == model.config.image_token_id) & (columns >= 0)
        # forward numbers the unreduced prompt 0..N-1; the pooled tokens keep their anchors' numbers
        assert positions["ids"][b, image].tolist() == (first_image + anchors).tolist()


def test_qwen2_vl_video_pools_each_frame_group():
    model, processor = tiny_model("qwen2_vl")
    inputs = example_inputs(processor, "qwen2_vl", "video", batch=1, seed=2)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    grid = (h // 2, w // 2)
    with torch.no_grad():
        full = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output[0]
    rows, stats = llm_visual_input(model, inputs, {"keep": 0.25})
    out = pooled_shape(grid, int(0.25 * grid[0] * grid[1] + 0.5))
    assert t > 1 and out != grid
    expected = torch.cat([loop_pool(group, grid, out)[0] for group in full.view(t, grid[0] * grid[1], -1)])
    torch.testing.assert_close(rows[0], expected, rtol=0, atol=1e-6)


def test_video_llava_keeps_each_frame_cls_and_pools_its_patches():
    model, processor = tiny_model("video_llava")
    inputs = example_inputs(processor, "video_llava", "video", batch=1, seed=2)
    with torch.no_grad():
        frames = model.model.get_video_features(inputs["pixel_values_videos"]).pooler_output  # (T, 257, D)
    rows, stats = llm_visual_input(model, inputs, {"keep": 0.25})
    expected = torch.cat([torch.cat([f[:1], loop_pool(f[1:], (16, 16), (8, 8))[0]]) for f in frames])
    torch.testing.assert_close(rows[0], expected, rtol=0, atol=1e-6)


def test_llava_next_pools_each_surviving_view_and_keeps_newlines():
    model, processor = tiny_model("llava_next")
    inputs = example_inputs(processor, "llava_next", batch=1, seed=2)
    size = inputs["image_sizes"][0].tolist()
    with torch.no_grad():
        packed = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0]
    rows, stats = llm_visual_input(model, inputs, {"keep": 0.5})
    sources, n_views = reference_layout(model, size)
    expected = packed.clone()  # pooled features written at their cell's centre row, others dropped
    kept_rows = set((sources < 0).nonzero().squeeze(1).tolist())  # every newline
    for view in range(n_views):
        view_rows = ((sources >= 0) & (sources // 16 == view)).nonzero().squeeze(1)
        if len(view_rows) == 0:
            continue
        patches = sources[view_rows] % 16
        grid = (len((patches // 4).unique()), len((patches % 4).unique()))
        out = pooled_shape(grid, int(0.5 * len(patches) + 0.5))
        pooled, anchors = loop_pool(packed[view_rows], grid, out)
        expected[view_rows[anchors]] = pooled
        kept_rows |= set(view_rows[anchors].tolist())
    assert any(v.grid[0] != v.grid[1] for v in stats.views)
    torch.testing.assert_close(rows[0], expected[sorted(kept_rows)], rtol=0, atol=1e-6)


def test_bad_anchor_is_rejected(llava):
    model, _ = llava
    with pytest.raises(ValueError, match="anchor must be one of"):
        vtr.patch(model, "pool", anchor="middle")
    assert not vtr.is_patched(model)
