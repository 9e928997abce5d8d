"""AIM: the merge's invariants, PageRank against eager attention, the schedule, and the engine's
consistency (no-cache recompute, batch-1) with progressive pruning."""
import copy

import pytest
import torch

import vtr
from reference import check_generate_against_layer_loop
from vtr.ops.merge import merge_to
from vtr.reducers.aim import AIM, AIMConfig
from vtr.testing import example_inputs, tiny_model

EIGHT_LAYERS = {"text": {"num_hidden_layers": 8}}


@pytest.fixture
def llava8():
    return tiny_model("llava", **EIGHT_LAYERS)


def test_weighted_merge_conserves_mass_and_membership():
    x = torch.randn(576, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = merge_to(x, 144)
    assert result.features.shape == (144, 32) and int(result.sizes.sum()) == 576
    assert torch.equal(result.index, result.index.sort().values)  # spatial order kept
    torch.testing.assert_close((result.features * result.sizes[:, None]).sum(0), x.sum(0))
    for j in range(144):  # each output is the mean of the inputs that ended up in it
        members = (result.members == j).nonzero().squeeze(1)
        assert len(members) == int(result.sizes[j]) and int(result.index[j]) in members.tolist()
        torch.testing.assert_close(result.features[j], x[members].mean(0))


def test_reference_options_unweighted_and_scrambled():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weighted, plain = merge_to(x, 20), merge_to(x, 20, weighted=False)  # 64 -> 32 -> 20
    assert not torch.allclose(weighted.features, plain.features)
    scrambled = merge_to(x, 20, preserve_order=False)
    assert not torch.equal(scrambled.index, scrambled.index.sort().values)
    assert sorted(scrambled.index.tolist()) == weighted.index.tolist()  # same groups, other order


def test_schedule_follows_the_paper_on_28_layers():
    aim = AIM(AIMConfig())
    assert aim.schedule(28) == (14, 22)
    assert aim.llm_layers(28) == list(range(15, 23))
    assert [aim.retention(k, 28) for k in (15, 18, 22)] == [0.875, 0.5, 0.0]
    # S: 15 full layers, then 7/8 ... 1/8, then none: (15 + 3.5) / 28
    assert aim.share(28) == pytest.approx(18.5 / 28)
    assert aim.merge_ratio(28, 0.25) == pytest.approx(0.25 * 28 / 18.5)
    assert aim.merge_ratio(28, 0.9) == 1.0 and aim.floor(28, 576) == 0.0  # keep 0.25 <= S: prune to zero
    high = AIM(AIMConfig(keep=0.9))
    floor = high.floor(28, 576)  # nothing merged; pruning stops at f so that the mean is 0.9
    assert floor == pytest.approx(1 - 0.1 / (1 - 18.5 / 28))
    assert sum(high.retention(k, 28, floor) for k in range(28)) / 28 == pytest.approx(0.9)


@pytest.mark.parametrize("keep", [0.25, 0.8, 96])
def test_keep_is_the_total_budget(llava8, inputs2, keep):
    """The mean layer share (tokens per decoder layer / visual tokens in) is keep, up to rounding."""
    model, _ = llava8
    with vtr.patched(model, "aim", keep=keep):
        with torch.no_grad():
            model(**inputs2)
        target = keep / 576 if isinstance(keep, int) else keep
        for share, layers in zip(model.vtr.stats.layer_share, model.vtr.stats.visual_tokens_per_layer):
            assert abs(share - target) <= 1.5 / 576 * 8, (share, layers)  # a token per layer of rounding


def test_merge_and_schedule_knobs(llava8, inputs2):
    model, _ = llava8
    with vtr.patched(model, "aim", keep=0.5, prune=False):  # merging alone meets keep
        with torch.no_grad():
            model(**inputs2)
        assert model.vtr.stats.visual_tokens_per_layer[0] == [288] * 8
    with pytest.raises(ValueError, match="merge"):  # keep / merge below what the schedule keeps
        vtr.patch(model, "aim", keep=0.1, merge=0.5)
    with pytest.raises(ValueError, match="merge"):
        vtr.patch(model, "aim", keep=0.5, merge=0.5, prune=False)
    assert not vtr.is_patched(model)


@pytest.mark.parametrize("settings", [{"keep": 1.0}, {"keep": 1.0, "prune": False}, {"keep": 10_000}])
def test_keep_one_is_identity(llava8, inputs2, settings):
    model, _ = llava8
    with torch.no_grad():
        ref = model(**inputs2).logits
    with vtr.patched(model, "aim", **settings):
        with torch.no_grad():
            assert torch.equal(model(**inputs2).logits, ref)


def pagerank_from_probs(probs, mask, temperature=0.1, iterations=5):
    """Reference PageRank from eager post-softmax weights: softmax(logits/τ) = p^(1/τ) row-normalised.

    ``probs``: (B, H, n, n); ``mask``: (B, n) real tokens, the only sources (padding never votes).
    """
    m = probs.double() ** (1 / temperature)
    m = m / m.sum(-1, keepdim=True)
    real = mask.double()[:, None, :].expand(-1, m.shape[1], -1)
    v = real / real.sum(-1, keepdim=True)
    for _ in range(iterations):
        v = torch.einsum("bhi,bhij->bhj", v * real, m)
    return v.square().mean(1).sqrt()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_first_prune_equals_pagerank_of_eager_attention(llava8, impl):
    model, processor = llava8
    model.set_attn_implementation(impl)
    inputs = example_inputs(processor, "llava", batch=2, seed=2)
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    with vtr.patched(reference, "aim", keep=0.25, prune=False):  # the merged LLM input, unpruned
        with torch.no_grad():
            attentions = reference(**inputs, output_attentions=True).attentions
        llm_input = reference.vtr.stats.kept_columns
    mask = torch.stack([inputs["attention_mask"][b, llm_input[b]] for b in range(2)])
    importance = pagerank_from_probs(attentions[4], mask)  # layer 4's attention decides before layer 5
    # merge 0.25, then the paper's schedule on 8 layers (l1 = 4, l2 = 6: S = 5.5 / 8) to zero
    vtr.patch(model, "aim", keep=0.25 * 5.5 / 8, merge=0.25)
    with torch.no_grad():
        model(**inputs)
    stats = model.vtr.stats
    assert stats.stages["llm_layer_5"] == {"in": [144, 144], "out": [72, 72]}
    assert stats.stages["llm_layer_6"]["out"] == [0, 0]
    for b in range(2):
        visual = (inputs["input_ids"][b, llm_input[b]] == model.config.image_token_id).nonzero().squeeze(1)
        scores = importance[b]
        threshold = scores[visual].topk(72).values[-1]
        kept = stats.llm_columns[5][b]
        kept_visual = kept[torch.isin(kept, visual)]
        # τ = 0.1 sharpens the softmax tenfold, so float32 (vtr) and float64 (reference) may order
        # near-ties differently: every kept token must score within a hair of the 72nd best.
        assert len(kept_visual) == 72
        assert (scores[kept_visual] >= threshold * (1 - 1e-4)).all()
        expected = visual[torch.topk(scores[visual], 72).indices].sort().values
        assert len(set(kept_visual.tolist()) - set(expected.tolist())) <= 1  # at most one near-tie swapped


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_cached_generate_equals_no_cache_recompute(llava8, impl):
    model, processor = llava8
    model.set_attn_implementation(impl)
    vtr.patch(model, "aim", keep=0.25 * 6 / 8, merge=0.25, prune_start=4, prune_end=7)  # S = (5 + 2/3 + 1/3) / 8
    stats = check_generate_against_layer_loop(model, example_inputs(processor, "llava", batch=1, seed=3))
    assert [stats.stages[f"llm_layer_{k}"]["out"] for k in (5, 6, 7)] == [[96], [48], [0]]


def test_batch_equals_single(llava8):
    model, processor = llava8
    inputs = example_inputs(processor, "llava", batch=2, seed=7)
    vtr.patch(model, "aim", keep=0.25)
    with torch.no_grad():
        batch_logits = model(**inputs).logits[:, -1]
    for b in range(2):
        single = example_inputs(processor, "llava", batch=1, seed=7 + b)
        with torch.no_grad():
            torch.testing.assert_close(model(**single).logits[0, -1], batch_logits[b], rtol=0, atol=2e-5)


def test_bad_settings(llava):
    model, _ = llava
    with pytest.raises(ValueError, match="prune_start"):
        vtr.patch(model, "aim", prune_start=1.5)
    with pytest.raises(TypeError, match="weighted"):
        vtr.patch(model, "aim", weighted="yes")
    with pytest.raises(ValueError, match="temperature"):
        vtr.patch(model, "aim", temperature=0)
    assert not vtr.is_patched(model)


# -- reference="llava": the reference's LLaVA-1.5 path, against a plain re-implementation --------------

def plain_merge_round(x, metric, r):
    """One round of the reference's bipartite merge, written out: even tokens (A) each pick their most
    cosine-similar odd token (B) by ``metric``; the ``r`` A tokens with the best matches are folded into
    their B token (plain mean of the B token and the A tokens folded into it this round); output
    ``[unmerged A, best match first] + [B in order]``, for the features and for the metric alike."""
    unit = metric / metric.norm(dim=-1, keepdim=True)
    a, b = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    similarity = unit[a] @ unit[b].T
    best = [int(similarity[i].argmax()) for i in range(len(a))]
    score = [float(similarity[i, best[i]]) for i in range(len(a))]
    ranked = sorted(range(len(a)), key=lambda i: -score[i])  # stable: ties keep the earlier token
    merged, unmerged = ranked[:r], ranked[r:]
    groups = {j: [b[j]] for j in range(len(b))}
    for i in merged:
        groups[best[i]].append(a[i])

    def emit(t):
        return torch.stack([t[a[i]] for i in unmerged] + [t[groups[j]].mean(0) for j in range(len(b))])

    return emit(x), emit(metric)


def plain_reference_merge(x, keys, ratio):
    """The reference's iterative merge of ``x`` by ``keys`` down to ``int(n·ratio)`` tokens."""
    target = int(len(x) * ratio)
    while len(x) > target:
        x, keys = plain_merge_round(x, keys, min(len(x) // 2, len(x) - target))
    return x


def reference_llava_path(model, inputs, ratio):
    """The reference's LLaVA-1.5 path for one image: the last tower layer's keys computed by hand from
    its weights, the pre-projector patch features merged by them, then the projector; returns the
    pre-projector merged features and the LLM's input embeddings of the shortened prompt."""
    tower = model.model.vision_tower
    with torch.no_grad():
        hidden = tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        last = tower.encoder.layers[-1]
        keys = last.self_attn.k_proj(last.layer_norm1(hidden[-2]))[0, 1:]  # the last layer's input is hidden[-2]
        features = hidden[model.config.vision_feature_layer][0, 1:]  # the feature layer (-2), [CLS] dropped
        merged = plain_reference_merge(features, keys, ratio)
        projected = model.model.multi_modal_projector(merged)
        ids = inputs["input_ids"][0]
        image = (ids == model.config.image_token_id).nonzero().squeeze(1)
        short = torch.cat([ids[: image[0]], ids[image[:1]].repeat(len(merged)), ids[image[-1] + 1:]])
        embeds = model.get_input_embeddings()(short)
        embeds[image[0]: image[0] + len(merged)] = projected
    return merged, embeds[None]


@pytest.mark.parametrize("seed", [0, 5])
def test_reference_llava_equals_a_plain_reimplementation(llava, seed):
    """Same merged features (before and after the projector) and same logits as the reference's path,
    with int(576 · 0.3) = 172 tokens (rounding half up would keep 173)."""
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=1, seed=seed)
    merged, embeds = reference_llava_path(model, inputs, 0.3)
    assert merged.shape[0] == 172
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long)).logits
    seen = {"projector": [], "llm": []}
    hooks = [model.model.multi_modal_projector.register_forward_pre_hook(lambda m, a: seen["projector"].append(a[0])),
             model.model.language_model.register_forward_pre_hook(
                 lambda m, a, k: seen["llm"].append(k["inputs_embeds"]), with_kwargs=True)]
    try:
        with vtr.patched(model, "aim", keep=0.3, prune=False, reference="llava", weighted=False,
                         preserve_order=False, positions="renumber"):
            with torch.no_grad():
                logits = model(**inputs).logits
    finally:
        for hook in hooks:
            hook.remove()
    projected_merges = [t for t in seen["projector"] if t.ndim == 2]  # the tower's own call is (1, 576, D)
    assert len(projected_merges) == 1
    torch.testing.assert_close(projected_merges[0], merged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["llm"][-1], embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_reference_llava_truncates_the_pruning_counts(llava8, inputs2):
    """Merged to int(576 · 0.3) = 172, then l1 = 4, l2 = 7 on 8 layers: layer l keeps int(172 · (1 - (l - 4)/3))
    visual tokens (114 and 57; rounding half up keeps 115 at layer 5)."""
    model, _ = llava8
    expected = [172] * 5 + [int(172 * (1 - (layer - 4) / 3)) for layer in (5, 6, 7)]
    assert expected[5:] == [114, 57, 0]
    settings = dict(keep=0.3 * 6 / 8, merge=0.3, prune_start=4, prune_end=7)
    with vtr.patched(model, "aim", reference="llava", **settings):
        with torch.no_grad():
            model(**inputs2)
        assert model.vtr.stats.visual_tokens_per_layer == [expected, expected]
    with vtr.patched(model, "aim", **settings):  # vtr's own path rounds half up
        with torch.no_grad():
            model(**inputs2)
        assert model.vtr.stats.visual_tokens_per_layer[0][5] == 115


def test_reference_llava_keep_one_is_identity(llava, inputs2):
    model, _ = llava
    with torch.no_grad():
        ref = model(**inputs2).logits
    with vtr.patched(model, "aim", keep=1.0, reference="llava"):
        with torch.no_grad():
            assert torch.equal(model(**inputs2).logits, ref)


def test_reference_llava_refused_where_the_family_cannot_provide_it():
    model, processor = tiny_model("llava_next")
    with pytest.raises(ValueError, match="pre_projector_features, tower_last_keys.*'llava_next' models do not provide"):
        vtr.patch(model, "aim", reference="llava")
    assert not vtr.is_patched(model)
    inputs = example_inputs(processor, "llava_next", batch=1, seed=0)
    vtr.patch(model, "aim", keep=0.5)
    model.vtr.config.reference = "llava"  # a valid value; this family refuses it before the next call runs
    with pytest.raises(ValueError, match="tower_last_keys"):
        with torch.no_grad():
            model(**inputs)
    model.vtr.config.reference = None
    with torch.no_grad():
        model(**inputs)
    assert model.vtr.stats.visual_tokens_in[0] > model.vtr.stats.visual_tokens_out[0]
    vtr.unpatch(model)


@pytest.mark.parametrize("value", ["llava15", "LLaVA", True, 1])
def test_reference_bad_values(llava, value):
    model, _ = llava
    with pytest.raises(ValueError, match=r"reference .*'llava'"):
        vtr.patch(model, "aim", reference=value)
    assert not vtr.is_patched(model)
    vtr.patch(model, "aim")
    with pytest.raises(ValueError, match=r"reference .*'llava'"):
        model.vtr.config.reference = value
    assert model.vtr.config.reference is None
    vtr.unpatch(model)
