"""divrelay (vtr's method): the pool, the relevance and the relevant-diverse greedy against slow references
(eager attention and hidden states of the unpatched model fed only the pool), and the model-level properties."""
import copy

import pytest
import torch

import vtr
from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, model_of
from reference import oracle_forward
from test_divprune import reference_divprune
from vtr.reducers.divrelay import DivRelayConfig, relevant_diverse
from vtr.testing import example_inputs


def reference_greedy(relevance, vectors, k, beta):
    """Most relevant first; then argmax of r/max(r) · (min cosine distance to the kept)^β, with loops."""
    r = [float(x) / float(relevance.max()) for x in relevance]
    cos = lambda i, j: float(torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0))
    chosen = [max(range(len(r)), key=lambda i: (r[i], -i))]
    while len(chosen) < k:
        rest = [i for i in range(len(r)) if i not in chosen]
        gain = {i: r[i] * max(0.0, min(1 - cos(i, j) for j in chosen)) ** beta for i in rest}
        chosen.append(max(rest, key=lambda i: (gain[i], -i)))
    return sorted(chosen)


@pytest.mark.parametrize("k, beta", [(5, 1.0), (8, 2.0), (6, 0.5)])
def test_greedy_matches_reference(k, beta):
    g = torch.Generator().manual_seed(k)
    relevance, vectors = torch.rand(30, generator=g), torch.randn(30, 8, generator=g)
    assert relevant_diverse(relevance, vectors, k, beta).tolist() == reference_greedy(relevance, vectors, k, beta)


def test_zero_diversity_is_topk():
    g = torch.Generator().manual_seed(0)
    relevance, vectors = torch.rand(30, generator=g), torch.randn(30, 8, generator=g)
    assert relevant_diverse(relevance, vectors, 6, 0.0).tolist() == sorted(torch.topk(relevance, 6).indices.tolist())


@pytest.mark.parametrize("keep, pool, diversity, layer, relevance", [
    (0.05, 0.25, 1.0, 2, "none"),  # the defaults
    (0.1, 0.5, 2.0, 1, "instruction"),
    (0.1, 0.25, 1.0, 2, "last"),
])
def test_end_to_end_matches_eager_reference(keep, pool, diversity, layer, relevance):
    """The pool is DivPrune's max–min subset; the kept tokens follow from layer K-1's eager attention (of the
    instruction, or the last token) and the layer-K input states of the unpatched model fed only the pool."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=1, seed=4)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output[0]
    n_pool = int(pool * 576 + 0.5)
    pooled = reference_divprune(feats, n_pool)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    out = oracle_forward(eager, inputs, [torch.tensor(pooled)], output_attentions=True, output_hidden_states=True)
    ids = inputs["input_ids"][0]
    image = model.config.image_token_id
    first = int((ids == image).nonzero().min())
    cols = torch.cat([torch.arange(first), first + torch.tensor(pooled), torch.arange(first + 576, len(ids))])
    visual = torch.arange(first, first + n_pool)  # positions of the pool in the oracle's sequence
    instruction = torch.arange(first + n_pool, len(cols))
    attention = out.attentions[layer - 1][0].mean(0)  # (n, n) head mean
    scores = {"none": torch.ones(n_pool), "instruction": attention[instruction][:, visual].mean(0),
              "last": attention[-1, visual]}[relevance]
    k = int(keep / pool * n_pool + 0.5)
    expected = cols[visual[reference_greedy(scores, out.hidden_states[layer][0, visual], k, diversity)]]
    with vtr.patched(model, "divrelay", keep=keep, pool=pool, diversity=diversity, layer=layer, relevance=relevance):
        with torch.no_grad():
            model(**inputs)
        stats = model.vtr.stats
    assert stats.visual_tokens_per_layer[0] == [n_pool] * layer + [k] * (4 - layer)
    kept = stats.kept_columns[0]
    assert torch.equal(kept[ids[kept] == image], expected)


def test_validation():
    for bad in ({"pool": 0.0}, {"layer": 0}, {"diversity": -1}, {"relevance": "cls"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DivRelayConfig(**bad)


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("qwen2_vl", "image")])
def test_keep_one_is_identity(family, kind):
    check_keep_one_is_identity("divrelay", family, kind)


def test_batch_equals_single():
    check_batch_equals_single("divrelay", "llava", keep=0.1, padded=False)
