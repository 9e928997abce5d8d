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


def oracle_forward(model, inputs, kept, positions="original", sizes=None, **kwargs):
    """The unpatched model fed only the kept visual tokens of each image.

    ``kept[i]``: sorted patch indices kept for image i (images in row-major order). Rows must keep
    the same number of tokens. Position ids are the unpatched forward's (arange over the full
    prompt) gathered at the kept columns, or contiguous for ``positions="renumber"``.
    ``sizes[i]`` (proportional attention): how many patches each kept token of image i stands for; the
    model then gets a 4-D float mask, causal and padding, plus ``log size`` on those tokens' key columns.
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
    mask = torch.stack(rows_mask)
    if sizes is not None:
        mask = biased_causal_mask(torch.stack(rows_ids), mask, image_token, sizes, model.dtype)
    with torch.no_grad():
        return model(input_ids=torch.stack(rows_ids), attention_mask=mask,
                     mm_encoder_outputs={"image": feats}, **call)


def biased_causal_mask(ids, mask, image_token, sizes, dtype):
    """``(B, 1, L, L)`` additive mask: 0 where a query may attend (causal, real keys), the dtype's minimum
    elsewhere, plus ``log sizes[i][j]`` on the j-th image token of image i (images in row-major order)."""
    b, n = ids.shape
    low = torch.finfo(dtype).min
    out = torch.full((b, 1, n, n), low, dtype=dtype)
    image = 0
    for r in range(b):
        bias = torch.zeros(n, dtype=dtype)
        cols = (ids[r] == image_token).nonzero().squeeze(1)
        for start in range(0, len(cols), len(sizes[image])):
            bias[cols[start:start + len(sizes[image])]] = torch.log(torch.as_tensor(sizes[image], dtype=dtype))
            image += 1
        for q in range(n):
            for k in range(q + 1):
                if mask[r, k]:
                    out[r, 0, q, k] = bias[k]
    return out


def llava_input_embeds(model, input_ids, pixel_values):
    """``(1, N, D)`` LLM input of an unpatched LLaVA: token embeddings with image features scattered in."""
    with torch.no_grad():
        embeds = model.model.language_model.embed_tokens(input_ids)
        feats = torch.cat(list(model.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output))
        return embeds.masked_scatter((input_ids == model.config.image_token_id)[..., None], feats.to(embeds.dtype))


def manual_layer_loop(model, embeds, kept_by_layer, positions=None):
    """Reference for in-LLM pruning, written as a plain loop over the decoder layers (no hooks).

    One unpadded row. ``kept_by_layer[K]``: the LLM-input columns that layers ``>= K`` process
    (each a subset of the previous). Kept tokens keep their original RoPE positions; masks are
    explicit causal masks. ``positions``: ``(1, N)`` position ids of the LLM input (default
    ``arange``). Returns ``(1, n_last, V)`` logits of the rows the last layer kept.
    """
    lm = model.model.language_model
    with torch.no_grad():
        if positions is None:
            positions = torch.arange(embeds.shape[1])[None]
        cos, sin = lm.rotary_emb(embeds, positions)
        eager = lm.config._attn_implementation == "eager"

        def causal(n):
            allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
            if not eager:
                return allowed
            return torch.zeros(allowed.shape, dtype=embeds.dtype).masked_fill(~allowed, torch.finfo(embeds.dtype).min)

        hidden, current = embeds, torch.arange(embeds.shape[1])
        for i, decoder_layer in enumerate(lm.layers):
            if i in kept_by_layer:
                cols = kept_by_layer[i]
                local = torch.searchsorted(current, cols)
                assert torch.equal(current[local], cols), "kept columns must shrink layer by layer"
                hidden, current = hidden[:, local], cols
            hidden = decoder_layer(hidden, attention_mask=causal(hidden.shape[1]),
                                   position_embeddings=(cos[:, current], sin[:, current]),
                                   position_ids=positions[:, current])
        return model.lm_head(lm.norm(hidden))


def manual_pruned_logits(model, inputs, kept_columns, layer):
    """:func:`manual_layer_loop` for LLaVA inputs pruned once, before ``layer``."""
    embeds = llava_input_embeds(model, inputs["input_ids"], inputs["pixel_values"])
    return manual_layer_loop(model, embeds, {layer: kept_columns})


def check_generate_against_layer_loop(model, inputs, new_tokens=4, atol=2e-5):
    """Patched cached ``generate`` (one row) against :func:`manual_layer_loop` recomputing every step.

    Captures the LLM input (after any pre-LLM stage) and its position ids during the patched call,
    then unpatches the model and recomputes each step's logits with the same kept columns per layer.
    Returns the patched call's stats.
    """
    import vtr

    captured = {}

    def capture_llm_input(module, args, kwargs):
        captured.setdefault("embeds", kwargs["inputs_embeds"])
        captured.setdefault("positions", kwargs.get("position_ids"))

    hook = model.model.language_model.register_forward_pre_hook(capture_llm_input, with_kwargs=True)
    try:
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=[model.config.image_token_id])
    finally:
        hook.remove()
    stats = model.vtr.stats
    vtr.unpatch(model)
    embeds, positions = captured["embeds"], captured["positions"]
    n, caller_n = embeds.shape[1], inputs["input_ids"].shape[1]
    if positions is None:
        positions = torch.arange(n)[None]
    generated = out.sequences[:, caller_n:]
    for t in range(new_tokens):  # generated tokens continue after the caller's prompt (and its positions)
        step_embeds = torch.cat([embeds, model.get_input_embeddings()(generated[:, :t])], 1)
        step_positions = torch.cat([positions, positions[:, -1:] + 1 + torch.arange(t)[None]], 1)
        kept = {k: torch.cat([cols[0], torch.arange(n, n + t)]) for k, cols in stats.llm_columns.items()}
        expected = manual_layer_loop(model, step_embeds, kept, step_positions)[:, -1]
        torch.testing.assert_close(out.logits[t], expected, rtol=0, atol=atol)
    return stats
