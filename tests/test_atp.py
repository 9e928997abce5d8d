"""ATP-TF: scores against eager attention, adaptivity, calibration, and engine consistency."""
import copy

import pytest
import torch

import vtr
from reference import check_generate_against_layer_loop
from vtr.calibrate import measure
from vtr.reducers.atp import top_p
from vtr.testing import example_inputs, tiny_model


@pytest.fixture
def llava8():
    return tiny_model("llava", text={"num_hidden_layers": 8})


def reference_first_layer_keep(model, inputs, mass=0.9, stride=2, layer=1):
    """ATP-TF's first selection (budget="mean") recomputed from eager attention weights of layer ``layer - 1``."""
    picks = []
    for vis, redundancy in reference_redundancy(model, inputs, layer):
        keep = top_p(redundancy.float(), mass)
        spatial = torch.arange(0, len(vis), stride * stride)
        picks.append(vis[torch.unique(torch.cat([keep, spatial]))])
    return picks


def reference_redundancy(model, inputs, layer=1):
    """Per row: (visual columns, S_red of them) from eager attention weights of layer ``layer - 1``."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        probs = reference(**inputs, output_attentions=True).attentions[layer - 1].double().mean(1)  # (B, N, N)
    picks = []
    for b in range(probs.shape[0]):
        real = inputs["attention_mask"][b].bool()
        visual = (inputs["input_ids"][b] == model.config.image_token_id) & real
        text = real & ~visual
        columns = torch.arange(len(real))
        instruction = text & (columns > columns[visual].max())
        vis = visual.nonzero().squeeze(1)

        def received(queries):  # each key averaged over the selected queries at or after it
            q = queries.nonzero().squeeze(1)
            sums = probs[b][q][:, vis].sum(0)
            counts = (q[:, None] >= vis[None, :]).sum(0).clamp(min=1)
            return sums / counts

        def minmax(x):
            return (x - x.min()) / (x.max() - x.min())

        picks.append((vis, (minmax(received(visual)) + minmax(received(instruction))) / 2))
    return picks


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_first_selection_equals_eager_reference(llava8, inputs2, impl):
    model, _ = llava8
    model.set_attn_implementation(impl)
    expected = reference_first_layer_keep(model, inputs2)
    vtr.patch(model, "atp", budget="mean")
    with torch.no_grad():
        model(**inputs2)
    for b in range(2):
        cols = model.vtr.stats.llm_columns[1][b]
        cols = cols[cols >= 0]
        kept_visual = cols[inputs2["input_ids"][b, cols] == model.config.image_token_id]
        assert torch.equal(kept_visual, expected[b])


def test_count_adapts_per_sample_and_layer(llava8, inputs2):
    model, _ = llava8
    vtr.patch(model, "atp")
    with torch.no_grad():
        model(**inputs2)
    stages = model.vtr.stats.stages
    outs = [stages[k]["out"] for k in sorted(stages, key=lambda s: int(s.split("_")[-1]))]
    assert any(a != b for a, b in outs)  # the two inputs keep different counts
    assert all(x > y for x, y in zip([o[0] for o in outs], [o[0] for o in outs][1:]))  # fewer with depth


def test_calibration_hits_its_target(llava8):
    model, processor = llava8
    vtr.patch(model, "atp", budget="mean")
    samples = [example_inputs(processor, "llava", batch=1, seed=s) for s in range(4)]
    result = vtr.calibrate(model, samples, target_keep=0.3)
    assert result.reached and abs(result.mean - 0.3) <= 0.01 and result.std >= 0
    assert model.vtr.calibration is result and model.vtr.config.scale == result.scale
    held_out = [example_inputs(processor, "llava", batch=1, seed=s) for s in range(10, 12)]
    shares = measure(model, held_out)
    assert all(abs(s - 0.3) < 0.1 for s in shares)


def reference_budget_first_keep(model, inputs, keep, starts=(1, 2, 4, 6), n_layers=8, adapt=0.5, stride=2):
    """budget="sample"'s first selection from eager attention, written from the docstring's rule:
    ρ solved on a fine grid, the top-p proposal at p = q(2 - q) clamped to ±adapt of the planned count,
    then the spatial set (stride grown until it is at most half the count) plus the best redundancy."""
    spans = [b - a for a, b in zip(starts, list(starts[1:]) + [n_layers])]
    grid = torch.linspace(0, 1, 400001, dtype=torch.float64)
    shares = (starts[0] + sum(s * grid ** (j + 1) for j, s in enumerate(spans))) / n_layers
    rho = float(grid[(shares - keep).abs().argmin()])
    picks = []
    for vis, redundancy in reference_redundancy(model, inputs):
        n = len(vis)
        planned = n * rho
        proposal = len(top_p(redundancy.float(), rho * (2 - rho)))
        count = int(min(max(proposal, planned * (1 - adapt)), planned * (1 + adapt)) + 0.5)
        s = stride
        while -(-n // (s * s)) > max(1, count // 2):
            s += 1
        spatial = list(range(0, n, s * s))
        rest = [i for i in torch.sort(redundancy, descending=True, stable=True).indices.tolist() if i not in spatial]
        picks.append(vis[sorted(spatial + rest[:count - len(spatial)])])
    return picks


@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_budget_first_selection_equals_eager_reference(llava8, inputs2, keep):
    model, _ = llava8
    expected = reference_budget_first_keep(model, inputs2, keep)
    with vtr.patched(model, "atp", keep=keep):
        with torch.no_grad():
            model(**inputs2)
        for b in range(2):
            cols = model.vtr.stats.llm_columns[1][b]
            cols = cols[cols >= 0]
            kept_visual = cols[inputs2["input_ids"][b, cols] == model.config.image_token_id]
            # near-ties of float32 (vtr) against float64 (eager reference) may swap one token
            assert abs(len(kept_visual) - len(expected[b])) <= 1
            assert len(set(kept_visual.tolist()) ^ set(expected[b].tolist())) <= 2


@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_uncalibrated_budget_is_met_on_the_shipped_model(keep):
    """On the trained checkpoint's held-out images, without calibration, the mean layer share is keep ± 0.05."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vtr.shapes import CHECKPOINT, render_pil, test_set
    from vtr.testing import chat_prompt

    model = AutoModelForImageTextToText.from_pretrained(CHECKPOINT).eval()
    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    processor.tokenizer.padding_side = "left"
    items = test_set()[:20]
    inputs = processor(images=[render_pil(it.scene) for it in items], text=[chat_prompt(it.question) for it in items],
                       return_tensors="pt", padding=True)
    with vtr.patched(model, "atp", keep=keep):
        with torch.no_grad():
            model(**inputs, logits_to_keep=1)
        shares = model.vtr.stats.layer_share
        per_layer = model.vtr.stats.visual_tokens_per_layer
    assert abs(sum(shares) / len(shares) - keep) <= 0.05
    if keep == 0.5:  # (at 0.25 layer 0 alone spends the budget of this 4-layer LLM: one token per later layer)
        assert len({tuple(layers) for layers in per_layer}) > 1  # the split across layers adapts per image


@pytest.mark.parametrize("keep", [0.2, 0.5, 200])
def test_every_row_meets_keep_and_counts_adapt(llava8, inputs2, keep):
    model, _ = llava8
    with vtr.patched(model, "atp", keep=keep):
        with torch.no_grad():
            model(**inputs2)
        stats = model.vtr.stats
    target = keep / 576 if isinstance(keep, int) else keep
    for share in stats.layer_share:  # exact up to one token per layer of rounding
        assert abs(share - target) <= 4 / (576 * 8)
    first = stats.stages["llm_layer_1"]["out"]
    assert first[0] != first[1]  # the first ATP layer keeps a different count per image


@pytest.mark.parametrize("settings", [{"keep": 1.0}, {"keep": 10_000}, {"keep": 1.0, "budget": "mean"}])
def test_keep_one_is_identity(llava8, inputs2, settings):
    model, _ = llava8
    with torch.no_grad():
        ref = model(**inputs2).logits
    with vtr.patched(model, "atp", **settings):
        with torch.no_grad():
            assert torch.equal(model(**inputs2).logits, ref)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_cached_generate_equals_no_cache_recompute(llava8, impl):
    model, processor = llava8
    model.set_attn_implementation(impl)
    vtr.patch(model, "atp")
    stats = check_generate_against_layer_loop(model, example_inputs(processor, "llava", batch=1, seed=9))
    assert len(stats.llm_columns) == 4


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_batch_equals_single_with_ragged_counts(llava8, impl):
    model, processor = llava8
    model.set_attn_implementation(impl)
    inputs = example_inputs(processor, "llava", batch=2, seed=11)
    vtr.patch(model, "atp")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, suppress_tokens=[model.config.image_token_id])
    counts = model.vtr.stats.visual_tokens_out
    assert counts[0] != counts[1]  # rows keep different counts: the batch runs with filler entries
    for b in range(2):
        single = example_inputs(processor, "llava", batch=1, seed=11 + b)
        out1 = model.generate(**single, max_new_tokens=3, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, suppress_tokens=[model.config.image_token_id])
        assert model.vtr.stats.visual_tokens_out == [counts[b]]
        for t in range(3):
            torch.testing.assert_close(out1.logits[t][0], out.logits[t][b], rtol=0, atol=2e-5)


def test_bad_settings(llava):
    model, _ = llava
    with pytest.raises(ValueError, match=r"mass needs 4 entries"):
        vtr.patch(model, "atp", mass=(0.9,))
    with pytest.raises(TypeError, match="layers"):
        vtr.patch(model, "atp", layers="abcd")
    with pytest.raises(ValueError, match="calibrate needs"):
        vtr.calibrate(model, [])
    assert not vtr.is_patched(model)
