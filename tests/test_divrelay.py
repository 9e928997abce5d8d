"""divrelay (vtr's method): the pool size, the merge, the relevant-diverse greedy and the end-to-end selection
against slow references (eager attention and hidden states of the unpatched model fed only the merged pool),
the budget (measured layer share = the cost formula, never above a pre-LLM cut to ``keep``), and the
model-level properties."""
import copy
import math

import pytest
import torch

import vtr
from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, model_of
from reference import oracle_forward
from test_divprune import reference_divprune
from vtr.reducers.divrelay import (DivRelayConfig, cosine_distance, diverse_pool, merge_into_nearest, pool_size,
                                   relevant_diverse, split_pool)
from vtr.testing import example_inputs

N_LAYERS = 4  # the tiny LLaVA's decoder depth
N_PATCHES = 576


def half_up(x):
    return max(1, math.floor(x + 0.5))


def reference_budget(keep, n):
    return min(n, keep) if isinstance(keep, int) else min(n, half_up(keep * n))


def reference_pool(keep, n, final, layer, depth=N_LAYERS):
    """The largest pool whose relay layers plus cut layers spend at most depth·k token-layers, by search."""
    k = reference_budget(keep, n)
    if final == 1.0 or (isinstance(keep, float) and keep >= 1.0):
        return k, k
    for p in range(n, 0, -1):
        f = p if isinstance(keep, int) and keep >= p else min(p, half_up(final * p))
        if layer * p + (depth - layer) * f <= depth * k:
            return p, f
    raise AssertionError("no pool fits")  # p = k always fits


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


def reference_merge(patches, picks):
    """Each unpicked patch joins the picked patch of highest cosine similarity (first on ties); plain means,
    and how many patches each mean holds."""
    groups = {int(p): [patches[int(p)]] for p in picks}
    for i in range(len(patches)):
        if i in groups:
            continue
        sims = [float(torch.nn.functional.cosine_similarity(patches[i], patches[int(p)], dim=0)) for p in picks]
        groups[int(picks[max(range(len(sims)), key=lambda j: (sims[j], -j))])].append(patches[i])
    means = torch.stack([torch.stack(groups[int(p)]).mean(0) for p in picks])
    return means, torch.tensor([len(groups[int(p)]) for p in picks])


def reference_salient_pool(patches, k, salience=1.0):
    """Most distinctive patch first (mean cosine distance to all patches, itself included), then argmax
    distinctiveness^salience · min distance to the pool; loops over Python floats."""
    n = len(patches)
    d = [[max(0.0, 1 - float(torch.nn.functional.cosine_similarity(patches[i], patches[j], dim=0))) for j in range(n)]
         for i in range(n)]
    r = [(sum(row) / n) ** salience for row in d]
    chosen = [max(range(n), key=lambda i: (r[i], -i))]
    while len(chosen) < k:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (r[i] * min(d[i][j] for j in chosen), -i)))
    return sorted(chosen)


@pytest.mark.parametrize("k, beta", [(5, 1.0), (8, 2.0), (6, 0.5)])
def test_greedy_matches_reference(k, beta):
    g = torch.Generator().manual_seed(k)
    relevance, vectors = torch.rand(30, generator=g), torch.randn(30, 8, generator=g)
    picks = relevant_diverse(relevance, cosine_distance(vectors), k, beta)
    assert picks.tolist() == reference_greedy(relevance, vectors, k, beta)


def test_zero_diversity_is_topk():
    g = torch.Generator().manual_seed(0)
    relevance, vectors = torch.rand(30, generator=g), torch.randn(30, 8, generator=g)
    picks = relevant_diverse(relevance, cosine_distance(vectors), 6, 0.0)
    assert picks.tolist() == sorted(torch.topk(relevance, 6).indices.tolist())


@pytest.mark.parametrize("k, salience", [(5, 1.0), (9, 2.0), (3, 0.5)])
def test_salient_pool_matches_reference(k, salience):
    g = torch.Generator().manual_seed(k)
    patches = torch.randn(36, 8, generator=g)
    patches[:20] += 3.0 * torch.randn(8, generator=g)  # a dominant "background" the distinctive patches stand out from
    from vtr.ops.diversity import cosine_matrix
    assert diverse_pool(cosine_matrix(patches), k, salience).tolist() == reference_salient_pool(patches, k, salience)


def test_zero_salience_is_divprune():
    g = torch.Generator().manual_seed(5)
    patches = torch.randn(40, 8, generator=g)
    from vtr.ops.diversity import cosine_matrix
    assert diverse_pool(cosine_matrix(patches), 7, 0.0).tolist() == reference_divprune(patches, 7)


def test_merge_matches_reference():
    g = torch.Generator().manual_seed(3)
    patches = torch.randn(40, 6, generator=g)
    picks = torch.tensor([2, 7, 11, 30, 39])
    features, sizes = merge_into_nearest(patches, picks)
    expected, expected_sizes = reference_merge(patches, picks)
    assert torch.allclose(features, expected, atol=1e-6) and torch.equal(sizes, expected_sizes)
    assert int(sizes.sum()) == len(patches)


@pytest.mark.parametrize("n", [144, 576, 50])
@pytest.mark.parametrize("keep, final, layer", [(0.1, 0.7, 2), (0.05, 0.7, 2), (0.1, 0.5, 1), (0.25, 0.3, 3),
                                                (0.9, 0.7, 2), (20, 0.7, 2), (0.1, 1.0, 2)])
def test_pool_size_matches_reference(n, keep, final, layer):
    k = reference_budget(keep, n)
    expected, _ = reference_pool(keep, n, final, layer)
    assert pool_size(n, k, final, layer, N_LAYERS) == (k if final == 1.0 else expected)


def test_split_pool_is_proportional():
    assert split_pool(10, [3, 3, 4]) == [3, 3, 4]
    assert split_pool(7, [4, 4, 4]) == [3, 2, 2]  # remainders tie: the first views get the extra tokens
    assert split_pool(5, [1, 9]) == [1, 4] and split_pool(12, [12, 12]) == [6, 6]
    for total, sizes in [(13, [5, 7, 9]), (1, [3, 3]), (20, [20, 1])]:
        shares = split_pool(total, sizes)
        assert sum(shares) == total and all(0 <= s <= n for s, n in zip(shares, sizes))
        assert all(abs(s - total * n / sum(sizes)) < 1 for s, n in zip(shares, sizes))


@pytest.mark.parametrize("keep, final, diversity, layer, relevance, merge, salience, proportional", [
    (0.05, 1.0, 1.0, 2, "none", True, 1.0, True),  # the defaults: no relay
    (0.1, 1.0, 1.0, 2, "none", True, 0.0, False),  # DivPrune's pool, merged, plain attention
    (0.05, 0.7, 1.0, 2, "none", True, 1.0, True),
    (0.05, 0.7, 1.0, 2, "none", True, 0.0, False),
    (0.1, 0.5, 2.0, 1, "instruction", True, 0.0, False),
    (0.1, 0.7, 1.0, 2, "last", False, 0.0, False),
])
def test_end_to_end_matches_eager_reference(keep, final, diversity, layer, relevance, merge, salience, proportional):
    """The pool is the (distinctiveness-weighted) max–min subset of the budget's size, carrying its cluster
    means, each drawing attention as its cluster's patches would (proportional attention: the oracle's 4-D
    mask adds log size to its key columns); the kept tokens follow from layer K-1's eager attention (of the
    instruction, or the last token) and the layer-K input states of the unpatched model fed only that pool."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=1, seed=4)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output[0]
    n_pool, k = reference_pool(keep, N_PATCHES, final, layer)
    pooled = reference_salient_pool(feats, n_pool, salience) if salience else reference_divprune(feats, n_pool)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    sizes = None
    if merge:  # the oracle gathers features at the pooled indices: place the cluster means there
        replaced = feats.clone()
        replaced[torch.tensor(pooled)], cluster_sizes = reference_merge(feats, torch.tensor(pooled))
        sizes = [cluster_sizes.tolist()] if proportional else None
        original = eager.model.get_image_features

        def merged_features(*args, **kwargs):
            out = original(*args, **kwargs)
            out.pooler_output = [replaced]
            return out
        eager.model.get_image_features = merged_features
    out = oracle_forward(eager, inputs, [torch.tensor(pooled)], sizes=sizes, output_attentions=True,
                         output_hidden_states=True)
    ids = inputs["input_ids"][0]
    image = model.config.image_token_id
    first = int((ids == image).nonzero().min())
    cols = torch.cat([torch.arange(first), first + torch.tensor(pooled), torch.arange(first + N_PATCHES, len(ids))])
    visual = torch.arange(first, first + n_pool)  # positions of the pool in the oracle's sequence
    instruction = torch.arange(first + n_pool, len(cols))
    attention = out.attentions[layer - 1][0].mean(0)  # (n, n) head mean
    scores = {"none": torch.ones(n_pool), "instruction": attention[instruction][:, visual].mean(0),
              "last": attention[-1, visual]}[relevance]
    if final == 1.0:  # no cut: the pool stays, and the logits are the oracle's (merged features included)
        expected = cols[visual]
    else:
        expected = cols[visual[reference_greedy(scores, out.hidden_states[layer][0, visual], k, diversity)]]
    with vtr.patched(model, "divrelay", keep=keep, final=final, diversity=diversity, layer=layer,
                     relevance=relevance, merge=merge, salience=salience, proportional=proportional):
        with torch.no_grad():
            logits = model(**inputs).logits
        stats = model.vtr.stats
    assert stats.visual_tokens_per_layer[0] == [n_pool] * layer + [k] * (N_LAYERS - layer)
    kept = stats.kept_columns[0]
    assert torch.equal(kept[ids[kept] == image], expected)
    if final == 1.0:
        assert torch.allclose(logits[0, -1], out.logits[0, -1], atol=1e-4)


def test_proportional_attention_changes_the_answer_and_can_be_switched_off():
    """The size bias is not a no-op (logits move), and ``proportional=False`` is the same pool and merge with
    plain attention: the oracle without the bias."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=1, seed=4)
    runs = {}
    for proportional in (True, False):
        with vtr.patched(model, "divrelay", keep=0.05, proportional=proportional), torch.no_grad():
            runs[proportional] = (model(**inputs).logits[0, -1], model.vtr.stats)
    assert runs[True][1].kept_columns[0].tolist() == runs[False][1].kept_columns[0].tolist()
    assert runs[False][1].key_bias is None and float(runs[True][1].key_bias.max()) > 0
    assert (runs[True][0] - runs[False][0]).abs().max() > 1e-3


@pytest.mark.parametrize("keep, final, layer", [(0.05, 1.0, 2), (0.1, 1.0, 2), (0.05, 0.7, 2), (0.1, 0.7, 2),
                                                (0.1, 0.5, 1), (0.25, 0.7, 3), (0.9, 0.7, 2), (30, 0.7, 2)])
def test_layer_share_is_the_budget_formula(keep, final, layer):
    """``model.vtr.stats.layer_share`` is ``(K·P + (L-K)·F) / (L·N)``, never above a pre-LLM cut to ``keep``."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=2, seed=1)
    p, f = reference_pool(keep, N_PATCHES, final, layer)
    expected = (layer * p + (N_LAYERS - layer) * f) / (N_LAYERS * N_PATCHES)
    with vtr.patched(model, "divrelay", keep=keep, final=final, layer=layer):
        with torch.no_grad():
            model(**inputs)
        shares = model.vtr.stats.layer_share
    assert shares == pytest.approx([expected] * 2, abs=1e-12)
    assert all(s <= reference_budget(keep, N_PATCHES) / N_PATCHES + 1e-12 for s in shares)


def test_no_cut_is_divprune():
    """``final=1.0``: the pool is the budget and nothing is cut; without salience and the merge that is
    DivPrune at keep."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=1, seed=2)
    with vtr.patched(model, "divprune", keep=0.1):
        with torch.no_grad():
            ref = model(**inputs).logits
    with vtr.patched(model, "divrelay", keep=0.1, final=1.0, merge=False, salience=0.0):
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, ref)


def test_grid_pool():
    """``pool="grid"``: the pool is the evenly spaced patches floor((i + 0.5)·N / k)."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=1, seed=2)
    k = reference_budget(0.05, N_PATCHES)
    ids = inputs["input_ids"][0]
    first = int((ids == model.config.image_token_id).nonzero().min())
    with vtr.patched(model, "divrelay", keep=0.05, pool="grid"):
        with torch.no_grad():
            model(**inputs)
        kept = model.vtr.stats.kept_columns[0]
    image = kept[ids[kept] == model.config.image_token_id] - first
    assert image.tolist() == [int((i + 0.5) * N_PATCHES / k) for i in range(k)]


def test_validation():
    for bad in ({"final": 0.0}, {"final": 1.5}, {"layer": 0}, {"diversity": -1}, {"relevance": "cls"},
                {"pool": 0.25}, {"salience": -0.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DivRelayConfig(**bad)
    with pytest.raises(TypeError, match="merge"):
        DivRelayConfig(merge="yes")
    with pytest.raises(TypeError, match="proportional"):
        DivRelayConfig(proportional=1)


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("qwen2_vl", "image")])
def test_keep_one_is_identity(family, kind):
    check_keep_one_is_identity("divrelay", family, kind)


def test_batch_equals_single():
    check_batch_equals_single("divrelay", "llava", keep=0.1, padded=False)


def test_relay_layer_is_checked_against_the_depth_only_with_a_relay():
    """Without a relay (final=1.0, the default) divrelay runs on any depth, e.g. a 2-layer LLM where the default
    relay layer 2 does not exist; with a relay, a layer past the depth is refused at patch time."""
    from vtr.testing import tiny_model

    model, processor = tiny_model("llava", text={"num_hidden_layers": 2})
    inputs = example_inputs(processor, "llava", "image")
    with vtr.patched(model, "divrelay", keep=0.25), torch.no_grad():
        assert model(**inputs).logits.shape[1] < inputs["input_ids"].shape[1]
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        vtr.patch(model, "divrelay", keep=0.25, final=0.7)
    assert not vtr.is_patched(model)
