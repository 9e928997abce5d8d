"""The public API: patch/unpatch/patched, the handle, the registry, and clear errors."""
from dataclasses import dataclass

import pytest
import torch

import vtr
from vtr.reducers.random_subset import RandomConfig
from vtr.ops.selection import keep_count


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_list_reducers_has_builtins_with_descriptions():
    reducers = vtr.list_reducers()
    assert {"fastervlm", "random"} <= set(reducers)
    assert all(isinstance(d, str) and d for d in reducers.values())


def test_unpatch_restores_bitwise(llava, inputs2):
    model, _ = llava
    before = logits(model, inputs2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs, hooks = set(model.__dict__), hook_count(model)  # transformers registers its own hooks
    vtr.patch(model, "fastervlm", keep=0.1)
    model(**inputs2)
    model.generate(**inputs2, max_new_tokens=2, do_sample=False)
    vtr.unpatch(model)
    assert set(model.__dict__) == attrs
    assert not hasattr(model, "vtr") and hook_count(model) == hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, inputs2), before)


def test_handle_unpatch_and_context_manager_restore_even_on_error(llava, inputs2):
    model, _ = llava
    with pytest.raises(RuntimeError):
        with vtr.patched(model, "random", keep=0.5):
            assert vtr.is_patched(model) and model.vtr.reducer == "random"
            raise RuntimeError("user code failed")
    assert not vtr.is_patched(model)
    vtr.patch(model, "fastervlm")
    model.vtr.unpatch()
    assert not vtr.is_patched(model) and "forward" not in model.__dict__


def test_config_edits_apply_from_next_call(llava, inputs2):
    model, _ = llava
    vtr.patch(model, "fastervlm", keep=0.1)
    model(**inputs2)
    assert model.vtr.stats.visual_tokens_out == [58, 58]
    model.vtr.config.keep = 0.25
    model(**inputs2)
    assert model.vtr.stats.visual_tokens_out == [144, 144]
    model.vtr.config.keep = 29  # an int is a count
    model(**inputs2)
    assert model.vtr.stats.visual_tokens_out == [29, 29]


def test_stats_report_stages_layers_and_flops(llava, inputs2):
    model, _ = llava
    vtr.patch(model, "fastervlm", keep=0.25)
    out = model(**inputs2)
    stats = model.vtr.stats
    assert stats.visual_tokens_in == [576, 576] and stats.stages["pre_llm"] == {"in": [576, 576], "out": [144, 144]}
    assert stats.visual_tokens_per_layer == [[144] * 4, [144] * 4]
    assert 0 < stats.flops_ratio < 0.5
    assert out.logits.shape[1] == inputs2["input_ids"].shape[1] - (576 - 144)
    # kept_columns map each output row back to the caller's prompt
    for b, cols in enumerate(stats.kept_columns):
        assert (inputs2["input_ids"][b, cols] == model.config.image_token_id).sum() == 144
        assert torch.equal(cols, cols.sort().values) and len(cols) == out.logits.shape[1]


def test_keep_count_rounding():
    assert [keep_count(k, 576) for k in (0.5, 0.25, 0.1, 0.05, 1.0)] == [288, 144, 58, 29, 576]
    assert keep_count(1, 576) == 1 and keep_count(10_000, 576) == 576 and keep_count(0.0001, 576) == 1


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"keep": 0.0}, ValueError, "keep"),
        ({"keep": 1.5}, ValueError, "(0, 1]"),
        ({"keep": 0}, ValueError, ">= 1"),
        ({"keep": -3}, ValueError, ">= 1"),
        ({"keep": "0.1"}, TypeError, "keep"),
        ({"keep": True}, TypeError, "keep"),
        ({"positions": "shifted"}, ValueError, "renumber"),
        ({"ratio": 0.1}, TypeError, "allowed: keep, positions"),
    ],
)
def test_bad_config_raises_and_leaves_model_unpatched(llava, kwargs, error, words):
    model, _ = llava
    attrs = set(model.__dict__)
    with pytest.raises(error, match=None) as info:
        vtr.patch(model, "fastervlm", **kwargs)
    assert words in str(info.value)
    assert set(model.__dict__) == attrs and not vtr.is_patched(model)


def test_unknown_reducer_lists_available(llava):
    model, _ = llava
    with pytest.raises(ValueError, match="available: .*fastervlm.*random"):
        vtr.patch(model, "fastervlmm")
    assert not vtr.is_patched(model)


def test_unsupported_model_names_supported_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="unsupported model LlamaForCausalLM; vtr supports: llava"):
        vtr.patch(model, "fastervlm")
    assert not hasattr(model, "vtr") and "forward" not in model.__dict__


@pytest.mark.parametrize("reducer", ["quota", "globalcom2"])
def test_reducers_for_other_families_are_refused_at_patch_time(llava, reducer):
    model, _ = llava
    with pytest.raises(ValueError, match=f"reducer '{reducer}' works on .* models, not 'llava'.*fastervlm"):
        vtr.patch(model, reducer)
    assert not vtr.is_patched(model) and "forward" not in model.__dict__


def test_double_patch_says_how_to_unpatch(llava):
    model, _ = llava
    vtr.patch(model, "fastervlm")
    with pytest.raises(ValueError, match="unpatch"):
        vtr.patch(model, "random")
    assert model.vtr.reducer == "fastervlm"
    with pytest.raises(ValueError, match="not patched"):
        vtr.unpatch(vtr.unpatch(model))


def test_bad_live_config_edit_is_rejected_and_reverted(llava):
    model, _ = llava
    vtr.patch(model, "fastervlm", keep=0.1)
    with pytest.raises(ValueError):
        model.vtr.config.keep = 2.0
    with pytest.raises(AttributeError, match="allowed"):
        model.vtr.config.kep = 0.2
    assert model.vtr.config.keep == 0.1


def test_config_object_and_overrides(llava, inputs2):
    model, _ = llava
    vtr.patch(model, RandomConfig(keep=0.5, seed=3), keep=0.25)
    assert model.vtr.reducer == "random" and model.vtr.config.seed == 3 and model.vtr.config.keep == 0.25
    model(**inputs2)
    assert model.vtr.stats.visual_tokens_out == [144, 144]


def test_video_input_to_llava_is_rejected(llava, inputs2):
    model, _ = llava
    vtr.patch(model, "fastervlm")
    with pytest.raises(ValueError, match="pixel_values_videos.*images only"):
        model(**inputs2, pixel_values_videos=torch.zeros(1, 8, 3, 336, 336))
    assert model.vtr.stats is None


def test_mismatched_placeholders_raise_clearly(llava, inputs2):
    model, _ = llava
    vtr.patch(model, "fastervlm")
    ids = inputs2["input_ids"].clone()
    ids[0, ids[0] == model.config.image_token_id] = 7  # row 0 loses its image placeholders
    with pytest.raises(ValueError, match="placeholders"):
        model(**{**inputs2, "input_ids": ids})
    ids = inputs2["input_ids"].clone()
    ids[1, (ids[1] == model.config.image_token_id).nonzero()[:10, 0]] = 7  # a partial run
    with pytest.raises(ValueError, match="placeholders"):
        model(**{**inputs2, "input_ids": ids})


def test_inputs_embeds_with_pixels_is_reduced_like_input_ids(llava, inputs2):
    """Since generation parity (issue 12): the placeholders are found from the embeddings and the embeddings are
    gathered with the kept columns, so the call equals the same call made with ``input_ids``."""
    model, _ = llava
    vtr.patch(model, "fastervlm", keep=0.25)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs2["input_ids"])
        by_embeds = model(inputs_embeds=embeds, pixel_values=inputs2["pixel_values"],
                          attention_mask=inputs2["attention_mask"]).logits
        by_ids = model(**inputs2).logits
    assert by_embeds.shape == by_ids.shape and torch.allclose(by_embeds, by_ids, atol=1e-5)


def test_third_party_reducer_registers_without_touching_vtr(llava, inputs2):
    @dataclass
    class FirstConfig(vtr.ReducerConfig):
        offset: int = 0

    @vtr.register_reducer("first_k_test", description="keeps the first patches (test)")
    class FirstK(vtr.Reducer):
        config_class = FirstConfig

        def plan(self, visual):
            return [torch.arange(self.budget(v)) + self.config.offset for v in visual.views]

    try:
        assert vtr.list_reducers()["first_k_test"] == "keeps the first patches (test)"
        model, _ = llava
        vtr.patch(model, "first_k_test", keep=10, offset=5)
        model(**inputs2)
        assert all(torch.equal(v.kept, torch.arange(5, 15)) for v in model.vtr.stats.views)
    finally:
        from vtr.registry import unregister_reducer

        unregister_reducer("first_k_test")


def test_reducer_returning_bad_plan_is_caught(llava, inputs2):
    @vtr.register_reducer("unsorted_test")
    class Unsorted(vtr.Reducer):
        """Returns descending indices (invalid)."""

        def plan(self, visual):
            return [torch.arange(self.budget(v)).flip(0) for v in visual.views]

    try:
        model, _ = llava
        vtr.patch(model, "unsorted_test", keep=4)
        with pytest.raises(RuntimeError, match="sorted"):
            model(**inputs2)
    finally:
        from vtr.registry import unregister_reducer

        unregister_reducer("unsorted_test")
