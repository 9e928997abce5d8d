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
    """ATP-TF's first selection recomputed from eager attention weights of layer ``layer - 1``."""
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

        redundancy = (minmax(received(visual)) + minmax(received(instruction))) / 2
        keep = top_p(redundancy.float(), mass)
        spatial = torch.arange(0, len(vis), stride * stride)
        picks.append(vis[torch.unique(torch.cat([keep, spatial]))])
    return picks


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_first_selection_equals_eager_reference(llava8, inputs2, impl):
    model, _ = llava8
    model.set_attn_implementation(impl)
    expected = reference_first_layer_keep(model, inputs2)
    vtr.patch(model, "atp")
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
    vtr.patch(model, "atp")
    samples = [example_inputs(processor, "llava", batch=1, seed=s) for s in range(4)]
    result = vtr.calibrate(model, samples, target_keep=0.3)
    assert result.reached and abs(result.mean - 0.3) <= 0.01 and result.std >= 0
    assert model.vtr.calibration is result and model.vtr.config.scale == result.scale
    held_out = [example_inputs(processor, "llava", batch=1, seed=s) for s in range(10, 12)]
    shares = measure(model, held_out)
    assert all(abs(s - 0.3) < 0.1 for s in shares)


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
    with pytest.raises(ValueError, match="one entry per ATP layer"):
        vtr.patch(model, "atp", mass=(0.9,))
    with pytest.raises(TypeError, match="ratio"):
        vtr.patch(model, "atp", keep=100)
    with pytest.raises(ValueError, match="calibrate needs"):
        vtr.calibrate(model, [])
    assert not vtr.is_patched(model)
