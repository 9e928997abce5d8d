"""Independent references the property tests compare against.

These are written without vtr's own splice/selection code: eager attention with
``output_attentions`` for scores, and a plain loop that feeds the *unpatched* model only the kept
tokens (the "oracle").
"""
from __future__ import annotations

import copy

import torch


def eager_cls_attention(model, pixel_values, layer=-2):
    """FasterVLM's signal the way its reference code gets it: eager CLIP with output_attentions.

    Returns ``(n_images, 576)``: attentions[layer][:, :, 0, 1:] averaged over heads.
    """
    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        out = tower(pixel_values, output_attentions=True)
    return out.attentions[layer][:, :, 0, 1:].float().mean(1)


def reference_topk(scores, k):
    """``(n, N)`` scores -> ``(n, k)`` sorted indices with torch.topk (not vtr's selection code)."""
    return torch.topk(scores, k, dim=-1).indices.sort(-1).values


def oracle_forward(model, inputs, kept, positions="original", **kwargs):
    """The unpatched model fed only the kept visual tokens of each image.

    ``kept[i]``: sorted patch indices kept for image i (images in row-major order). Rows must keep
    the same number of tokens. Position ids are the unpatched forward's (arange over the full
    prompt) gathered at the kept columns, or contiguous for ``positions="renumber"``.
    """
    image_token = model.config.image_token_id
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
    per_image = [f[k] for f, k in zip(feats.pooler_output, kept)]
    rows_ids, rows_mask, rows_pos, rows_labels = [], [], [], []
    image = 0
    for b, row in enumerate(inputs["input_ids"]):
        keep_cols, col = [], 0
        while col < len(row):
            if row[col] == image_token:
                keep_cols += [col + int(i) for i in kept[image]]
                col += 576
                image += 1
            else:
                keep_cols.append(col)
                col += 1
        cols = torch.tensor(keep_cols)
        rows_ids.append(row[cols])
        rows_mask.append(inputs["attention_mask"][b][cols])
        rows_pos.append(cols)
        if "labels" in kwargs:
            rows_labels.append(kwargs["labels"][b][cols])
    feats.pooler_output = per_image
    call = dict(kwargs)
    if rows_labels:
        call["labels"] = torch.stack(rows_labels)
    if positions == "original":
        call["position_ids"] = torch.stack(rows_pos)
    with torch.no_grad():
        return model(input_ids=torch.stack(rows_ids), attention_mask=torch.stack(rows_mask),
                     mm_encoder_outputs={"image": feats}, **call)


def manual_pruned_logits(model, inputs, kept_columns, layer):
    """Reference for in-LLM pruning, written as a plain loop over the decoder layers (no hooks).

    One unpadded row. Layers ``< layer`` run on every token; layers ``>= layer`` run on
    ``kept_columns`` only, with their original RoPE positions and an explicit causal mask.
    Returns ``(1, len(kept_columns), V)`` logits of the kept rows.
    """
    base, lm = model.model, model.model.language_model
    ids = inputs["input_ids"]
    with torch.no_grad():
        embeds = lm.embed_tokens(ids)
        feats = torch.cat(list(base.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output))
        embeds = embeds.masked_scatter((ids == model.config.image_token_id)[..., None], feats.to(embeds.dtype))
        positions = torch.arange(ids.shape[1])[None]
        cos, sin = lm.rotary_emb(embeds, positions)
        eager = lm.config._attn_implementation == "eager"

        def causal(n):
            allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
            if not eager:
                return allowed
            return torch.zeros(allowed.shape, dtype=embeds.dtype).masked_fill(~allowed, torch.finfo(embeds.dtype).min)

        hidden = embeds
        for i, decoder_layer in enumerate(lm.layers):
            if i == layer:
                hidden = hidden[:, kept_columns]
                cos, sin, positions = cos[:, kept_columns], sin[:, kept_columns], positions[:, kept_columns]
            hidden = decoder_layer(hidden, attention_mask=causal(hidden.shape[1]), position_embeddings=(cos, sin),
                                   position_ids=positions)
        return model.lm_head(lm.norm(hidden))
