"""Independent references for the Qwen2-VL property tests.

Written without vtr's adapter, splice or selection code: the vision tower's own *eager* attention
weights (captured on a deep copy through a registered attention function), the unpatched model's
own M-RoPE positions, and an oracle that feeds the unpatched model only the kept tokens.
"""
from __future__ import annotations

import copy
import importlib

import torch

CAPTURE = "vtr_test_eager_capture"


def eager_received_attention(model, pixel_values, grid_thw, block=-1):
    """Attention received per merged token in vision block ``block``, from eager attention weights.

    Runs a deep copy of ``model.model.visual`` whose attention is transformers' own
    ``eager_attention_forward`` (of the tower's own modeling module: Qwen2-VL, Qwen2.5-VL, Qwen3-VL), wrapped to keep the weights ``(1, H, n, n)`` of each chunk (an image
    or a video frame group). Returns one ``(n / 4,)`` tensor per chunk: weights averaged over query
    rows and heads, then over each 2×2 merge window (4 consecutive patches).
    """
    from transformers import AttentionInterface

    tower = copy.deepcopy(model.model.visual)
    eager_attention_forward = importlib.import_module(type(tower).__module__).eager_attention_forward
    target, weights = tower.blocks[block].attn, []

    def capture(module, query, key, value, attention_mask, **kwargs):
        out, w = eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if module is target:
            weights.append(w)
        return out, w

    AttentionInterface.register(CAPTURE, capture)
    tower.set_attn_implementation(CAPTURE)
    with torch.no_grad():
        tower(pixel_values.to(next(tower.parameters()).dtype), grid_thw=grid_thw)
    merge = tower.spatial_merge_size ** 2
    return [w[0].float().mean(dim=1).mean(dim=0).view(-1, merge).mean(dim=-1) for w in weights]


def reference_topk(scores, k):
    """``(N,)`` scores -> ``(k,)`` sorted indices with torch.topk (not vtr's selection code)."""
    return torch.topk(scores, k).indices.sort().values


def unpatched_positions(model, inputs):
    """The ``(3, B, N)`` M-RoPE position ids the unpatched model's forward feeds its LLM."""
    seen = {}

    def record(module, args, kwargs):
        seen["position_ids"] = kwargs["position_ids"]

    handle = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["position_ids"]


def oracle_forward(model, inputs, kept, labels=None):
    """The unpatched model fed only the kept tokens of one row (batch 1).

    ``kept``: per view (image, or video frame group, in prompt order), the sorted kept patch indices.
    Position ids are the unpatched forward's, and ``labels`` ``(1, N)`` are taken at the kept columns.
    """
    config = model.config
    positions = unpatched_positions(model, inputs)
    outputs, views = {}, []  # views: (token id, item index, frame group, tokens per group)
    for modality, pixels, grids, token_id, fn in (
        ("image", "pixel_values", "image_grid_thw", config.image_token_id, model.model.get_image_features),
        ("video", "pixel_values_videos", "video_grid_thw", config.video_token_id, model.model.get_video_features),
    ):
        if inputs.get(pixels) is None:
            continue
        with torch.no_grad():
            outputs[modality] = fn(inputs[pixels], inputs[grids], return_dict=True)
        for item, (t, h, w) in enumerate(inputs[grids].tolist()):
            views += [(token_id, modality, item, g, h * w // 4) for g in range(t)]
    row = inputs["input_ids"][0]
    columns, per_item, col, v = [], {}, 0, 0
    while col < len(row):
        if int(row[col]) in (config.image_token_id, config.video_token_id):
            token_id, modality, item, group, size = views[v]
            assert int(row[col]) == token_id
            columns += [col + int(i) for i in kept[v]]
            per_item.setdefault((modality, item), []).extend(group * size + int(i) for i in kept[v])
            col += size
            v += 1
        else:
            columns.append(col)
            col += 1
    for modality, out in outputs.items():
        out.pooler_output = tuple(f[per_item[(modality, i)]] for i, f in enumerate(out.pooler_output))
    cols = torch.tensor(columns)
    extra = {"labels": labels[:, cols]} if labels is not None else {}
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"][:, cols], attention_mask=inputs["attention_mask"][:, cols],
                     mm_token_type_ids=inputs["mm_token_type_ids"][:, cols], position_ids=positions[:, :, cols],
                     mm_encoder_outputs=outputs, **extra)
