"""FoPru's selections against its rules applied to eager attention of a deep copy of the vision tower."""
import copy

import pytest
import torch

import vtr
from reference import reference_topk
from test_llava_next import reference_views, tower_crops
from vtr.reducers.fopru import significance
from vtr.testing import example_inputs, tiny_model

CAPTURE = "vtr_test_fopru_capture"


def eager_layer_attention(tower, target_of, pixel_values, **call):
    """Eager logits and probabilities of one attention module of a deep copy of ``tower``.

    ``target_of(tower_copy)`` names the module. The copy runs transformers' own
    ``eager_attention_forward`` (with ``output_attentions`` for CLIP), wrapped to keep the weights it
    returns and the logits it softmaxes (``query·keyᵀ·scaling``). Returns two lists with one
    ``(1 or n, H, N, N)`` float32 tensor per call of that module (Qwen2-VL calls it per image/frame group).
    """
    from transformers import AttentionInterface
    from transformers.models.clip.modeling_clip import eager_attention_forward

    tower = copy.deepcopy(tower)
    target, logits, probs = target_of(tower), [], []

    def capture(module, query, key, value, attention_mask, scaling=None, **kwargs):
        out, weights = eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        if module is target:
            logits.append((torch.matmul(query, key.transpose(-1, -2)) * scaling).float())
            probs.append(weights.float())
        return out, weights

    AttentionInterface.register(CAPTURE, capture)
    tower.set_attn_implementation(CAPTURE)
    with torch.no_grad():
        tower(pixel_values, **call)
    return logits, probs


def reference_significance(attention, n_prefix=1):
    """``(n, H, N, N)`` → per image the column or row mean of the head-mean patch block, by larger variance."""
    block = attention[:, :, n_prefix:, n_prefix:].mean(1)  # (n, queries, keys)
    received, given = block.mean(1), block.mean(2)
    return [r if r.var() >= g.var() else g for r, g in zip(received, given)]


def reference_rows(scores, grid, n_rows):
    """Every patch of the ``n_rows`` rows with the largest sums, in raster order."""
    h, w = grid
    rows = torch.topk(scores.view(h, w).sum(1), n_rows).indices.sort().values
    return torch.tensor([r * w + c for r in rows.tolist() for c in range(w)])


def clip_attention(model, pixel_values, layer=-2):
    tower = model.model.vision_tower
    logits, probs = eager_layer_attention(tower, lambda t: t.encoder.layers[layer].self_attn, pixel_values,
                                          output_attentions=True)
    return {"logits": logits[0], "probs": probs[0]}


def test_significance_takes_the_mean_with_the_larger_variance():
    flat, peaked = torch.tensor([1.0, 1.1, 0.9, 1.0]), torch.tensor([0.0, 3.0, -2.0, 1.0])
    assert torch.equal(significance(torch.stack([flat, peaked])), peaked)
    assert torch.equal(significance(torch.stack([peaked, flat])), peaked)
    assert torch.equal(significance(torch.stack([flat, flat])), flat)


@pytest.mark.parametrize("probs", [False, True])
def test_patch_attention_means_in_row_blocks_equal_the_full_matrix(probs):
    from vtr.probes.vision import patch_attention_means

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 11, 12, generator=g), torch.randn(2, 11, 12, generator=g)  # [CLS] + 10 patches, 3 heads
    full = q.view(2, 11, 3, 4).transpose(1, 2) @ k.view(2, 11, 3, 4).permute(0, 2, 3, 1) * 0.5  # (B, H, N, N)
    if probs:
        full = full.softmax(-1)
    block = full[:, :, 1:, 1:].mean(1)
    expected = torch.stack([block.mean(1), block.mean(2)], dim=1)
    for max_elements in (1, 3 * 11 * 2 * 3, 1 << 24):  # one query row at a time, 3 rows, all rows
        got = patch_attention_means(q, k, 3, 0.5, probs=probs, max_elements=max_elements)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("attention", ["logits", "probs"])
def test_rank_keeps_topk_of_eager_significance(llava, inputs2, attention):
    model, _ = llava
    scores = reference_significance(clip_attention(model, inputs2["pixel_values"])[attention])
    vtr.patch(model, "fopru", keep=0.1, attention=attention)
    model(**inputs2)
    for view, s in zip(model.vtr.stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, 58))


def test_row_keeps_whole_rows_by_summed_significance(llava, inputs2):
    model, _ = llava
    scores = reference_significance(clip_attention(model, inputs2["pixel_values"])["logits"])
    vtr.patch(model, "fopru", keep=0.25, strategy="row")
    model(**inputs2)
    for view, s in zip(model.vtr.stats.views, scores):
        assert torch.equal(view.kept, reference_rows(s, (24, 24), 6))  # 144 tokens = 6 rows of 24


def test_follows_the_feature_layer(llava, inputs2):
    model, _ = llava
    scores = reference_significance(clip_attention(model, inputs2["pixel_values"], layer=-3)["logits"])
    vtr.patch(model, "fopru", keep=0.1)
    model(**inputs2, vision_feature_layer=-3)
    assert all(torch.equal(v.kept, reference_topk(s, 58)) for v, s in zip(model.vtr.stats.views, scores))


@pytest.mark.parametrize("strategy", ["rank", "row"])
def test_llava_next_per_surviving_view(strategy):
    """Each AnyRes view is ranked (or cut in rows) on its own grid: the surviving rectangle of a crop."""
    model, processor = tiny_model("llava_next")
    inputs = example_inputs(processor, "llava_next", batch=2, seed=1)
    crops = tower_crops(model, inputs)
    scores = reference_significance(clip_attention(model, crops)["probs"])  # per tower crop, (16,)
    views = reference_views(model, inputs["image_sizes"])
    vtr.patch(model, "fopru", keep=0.5, strategy=strategy, attention="probs")
    model(**inputs)
    stats = model.vtr.stats
    assert len(stats.views) == len(views) and any(v.grid[0] != v.grid[1] for v in stats.views)
    for record, (_, _, crop, patches) in zip(stats.views, views):
        rows, cols = (patches // 4).unique(), (patches % 4).unique()
        grid = (len(rows), len(cols))
        assert record.grid == grid
        s = scores[crop][patches]
        budget = int(0.5 * len(patches) + 0.5)
        expected = reference_topk(s, budget) if strategy == "rank" else reference_rows(s, grid, round(budget / grid[1]))
        assert torch.equal(record.kept, expected)


def test_qwen2_vl_uses_the_adapted_block_attention_and_says_so():
    model, processor = tiny_model("qwen2_vl")
    inputs = example_inputs(processor, "qwen2_vl", "video", batch=1, seed=2)
    visual = model.model.visual
    logits, _ = eager_layer_attention(visual, lambda t: t.blocks[-1].attn, inputs["pixel_values_videos"],
                                      grid_thw=inputs["video_grid_thw"])
    vtr.patch(model, "fopru", keep=0.25)
    model(**inputs)
    stats = model.vtr.stats
    assert len(stats.views) == len(logits) > 1  # one view per frame group
    for record, chunk in zip(stats.views, logits):  # chunk: (1, H, n, n), no [CLS]
        block = chunk[0].mean(0)
        means = torch.stack([block.mean(0), block.mean(1)]).view(2, -1, 4).mean(-1)  # 2x2 merge windows
        s = means[0] if means[0].var() >= means[1].var() else means[1]
        assert torch.equal(record.kept, reference_topk(s, int(0.25 * len(s) + 0.5)))
    assert stats.adapted and any("FoPru" in n and "adapted" in n for n in stats.notes)


def test_bad_options_are_rejected(llava):
    model, _ = llava
    with pytest.raises(ValueError, match="strategy must be one of"):
        vtr.patch(model, "fopru", strategy="column")
    with pytest.raises(ValueError, match="attention must be one of"):
        vtr.patch(model, "fopru", attention="softmax")
    assert not vtr.is_patched(model)
    vtr.patch(model, "fopru")
    with pytest.raises(ValueError, match="strategy"):
        model.vtr.config.strategy = "rows"
    assert model.vtr.config.strategy == "rank"
