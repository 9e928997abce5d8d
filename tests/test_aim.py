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
