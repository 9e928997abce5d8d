"""DART: the pivot / least-duplicated rule against a slow reference, in the LLM (layer 2, from an unpatched
run's hidden states and RoPE'd keys) and before it (projected features); the model-level properties."""
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import vtr
from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, model_of, visual_tokens
from vtr.reducers.dart import DARTConfig, DARTPre, DARTPreConfig
from vtr.testing import example_inputs


def reference_dart(vectors, image_pivots, text_vectors, k):
    """Keep the image pivots; share the rest of the budget evenly over the pivots (image first, earlier
    pivots one more); pivot by pivot add the unchosen tokens least cosine-similar to it."""
    chosen = list(image_pivots[:k])
    pivots = [vectors[i] for i in chosen] + list(text_vectors)
    remaining = k - len(chosen)
    for p, pivot in enumerate(pivots):
        quota = remaining // len(pivots) + (1 if p < remaining % len(pivots) else 0)
        sims = {i: float(torch.nn.functional.cosine_similarity(vectors[i].float(), pivot.float(), dim=0))
                for i in range(len(vectors)) if i not in chosen}
        chosen += sorted(sims, key=lambda i: (sims[i], i))[:quota]
    return sorted(chosen)


def top_l1(vectors, m):
    norms = vectors.float().abs().sum(-1)
    return sorted(range(len(norms)), key=lambda i: (-float(norms[i]), i))[:m]


@pytest.mark.parametrize("k, pivots", [(7, 8), (14, 8), (20, 3), (5, 1)])
def test_pre_llm_rule_matches_reference(k, pivots):
    g = torch.Generator().manual_seed(k)
    features = [torch.randn(40, 12, generator=g) for _ in range(2)]
    plans = DARTPre(DARTPreConfig(keep=k, pivots=pivots)).plan(visual_tokens(features))
    for plan, f in zip(plans, features):
        assert plan.tolist() == reference_dart(f, top_l1(f, pivots), [], k)


@pytest.mark.parametrize("layer, keep, pivot_image, pivot_text", [(2, 0.1, 4, 4), (1, 0.05, 2, 3), (3, 0.2, 0, 2)])
def test_in_llm_matches_reference(layer, keep, pivot_image, pivot_text):
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=1, seed=3)
    ids = inputs["input_ids"][0]
    visual = (ids == model.config.image_token_id).nonzero().squeeze(1)
    text = torch.arange(int(visual.max()) + 1, len(ids))
    lm = model.model.language_model
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # unpatched: layers before K see everything
        attn = lm.layers[layer - 1].self_attn
        x = lm.layers[layer - 1].input_layernorm(hidden[layer - 1])
        keys = attn.k_proj(x).view(1, len(ids), -1, attn.head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(x, torch.arange(len(ids))[None])
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        keys = keys[0].transpose(0, 1).flatten(1)  # (n, H_kv·d): repeated heads give the same ranking
    k = int(keep * len(visual) + 0.5)
    image_pivots = top_l1(keys[visual], pivot_image)
    text_pivots = [hidden[layer][0, text[i]] for i in top_l1(keys[text], pivot_text)]
    expected = visual[reference_dart(hidden[layer][0, visual], image_pivots, text_pivots, k)]
    with vtr.patched(model, "dart", keep=keep, layer=layer, pivot_image=pivot_image, pivot_text=pivot_text):
        with torch.no_grad():
            model(**inputs)
        cols = model.vtr.stats.kept_columns[0]
    assert torch.equal(cols[ids[cols] == model.config.image_token_id], expected)


def test_validation():
    with pytest.raises(ValueError, match="pivot"):
        DARTConfig(pivot_image=0, pivot_text=0)
    with pytest.raises(ValueError, match="layer"):
        DARTConfig(layer=0)
    with pytest.raises(ValueError, match="pivots"):
        DARTPreConfig(pivots=0)


@pytest.mark.parametrize("reducer, family, kind", [("dart", "llava", "image"), ("dart", "qwen2_vl", "image"),
                                                   ("dart_pre", "llava", "image")])
def test_keep_one_is_identity(reducer, family, kind):
    check_keep_one_is_identity(reducer, family, kind)


def test_batch_equals_single():
    check_batch_equals_single("dart_pre", "llava", keep=0.1)
    check_batch_equals_single("dart", "llava", keep=0.1, padded=False)
