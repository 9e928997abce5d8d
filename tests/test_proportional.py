"""Proportional attention (``vtr.engine.proportional``): the size bias of merged tokens, against references.

References: a loop-built additive mask; the patched model's own no-cache forward over the growing sequence
(every decode step of a cached ``generate`` must see the same bias); batch-1 runs for expanded rows; and,
in every family, the conservation of patches (each caller placeholder is counted by exactly one kept
token). The logits against the unpatched eager model with a biased 4-D mask are in ``tests/test_divrelay.py``.
"""
import math

import pytest
import torch

import vtr
from helpers import special_ids
from reducer_properties import model_of
from vtr.engine.proportional import biased_mask
from vtr.testing import example_inputs


def reference_mask(mask, bias, batch, queries, keys, past, offset=0):
    low = torch.finfo(torch.float32).min
    out = torch.empty(batch, 1, queries, keys)
    group = batch // bias.shape[0]
    for b in range(batch):
        for q in range(queries):
            for k in range(keys):
                column = offset + k  # the sequence entry key slot k holds
                if mask is None:
                    base = 0.0 if column <= past + q else low
                elif mask.dtype == torch.bool:
                    base = 0.0 if mask[b % mask.shape[0], 0, q, k] else low
                else:
                    base = float(mask[b % mask.shape[0], 0, q, k])
                out[b, 0, q, k] = base + (float(bias[b // group, column]) if column < bias.shape[1] else 0.0)
    return out


@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("kind", ["none", "bool", "float"])
def test_biased_mask_matches_reference(kind, offset):
    g = torch.Generator().manual_seed(0)
    batch, queries, keys, past = 4, 3, 7, 2
    bias = torch.rand(2, 5, generator=g)  # 2 planned rows, expanded to 4 (beams); keys past 5 get none
    allowed = torch.rand(1, 1, queries, keys, generator=g) > 0.3
    mask = {"none": None, "bool": allowed,
            "float": torch.zeros(1, 1, queries, keys).masked_fill(~allowed, torch.finfo(torch.float32).min)}[kind]
    got = biased_mask(mask, bias, batch, queries, keys, past, torch.float32, offset)
    torch.testing.assert_close(got, reference_mask(mask, bias, batch, queries, keys, past, offset), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_every_decode_step_sees_the_bias(family):
    """A cached greedy ``generate``'s per-step logits == the patched no-cache forward over the caller's growing
    sequence (which reduces the prompt again and biases it afresh)."""
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, "image", batch=2, seed=3)
    with vtr.patched(model, "divrelay", keep=0.1), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model),
                             return_dict_in_generate=True, output_logits=True)
        assert model.vtr.stats.key_bias is not None
        width = inputs["input_ids"].shape[1]
        for step in range(3):
            ids = out.sequences[:, :width + step]
            call = {**inputs, "input_ids": ids,
                    "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, step), value=1)}
            if "mm_token_type_ids" in inputs:
                call["mm_token_type_ids"] = torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, step))
            logits = model(**call, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[step], logits, rtol=0, atol=1e-4)


def test_expanded_rows_equal_single_greedy():
    """``num_return_sequences`` repeats each row's bias: every copy decodes like the row alone (sampling with
    ``top_k=1`` is greedy; plain greedy refuses ``num_return_sequences``)."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", "image", batch=2, seed=5)
    with vtr.patched(model, "divrelay", keep=0.05):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=True, top_k=1, num_return_sequences=2,
                             suppress_tokens=special_ids(model))
        one = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model))
    assert torch.equal(out, one.repeat_interleave(2, dim=0))


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("llava_next", "image"), ("qwen2_vl", "image"),
                                          ("qwen2_vl", "video"), ("video_llava", "video"),
                                          ("llava_onevision", "image+video"), ("qwen2_5_vl", "video"),
                                          ("qwen3_vl", "image"), ("gemma3", "image")])
def test_every_patch_is_counted_once(family, kind):
    """Per row, Σ exp(bias) over the kept visual columns == the caller's visual placeholders: each merged token
    stands for its cluster, every other visual token (newlines, [CLS]) for itself; text columns get no bias."""
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, kind, batch=2, seed=2)
    ids = inputs["input_ids"]
    with vtr.patched(model, "divrelay", keep=0.1), torch.no_grad():
        model(**inputs)
        stats = model.vtr.stats
        placeholders = torch.tensor(model.vtr.adapter.placeholder_ids())
    bias = stats.key_bias
    for b, columns in enumerate(stats.kept_columns):
        real = columns >= 0
        caller = columns[real]
        visual = torch.isin(ids[b, caller], placeholders)
        row_bias = bias[b, :len(columns)][real]
        assert float(row_bias[~visual].abs().max()) == 0.0
        assert math.isclose(float(row_bias[visual].exp().sum()), int(torch.isin(ids[b], placeholders).sum()), rel_tol=1e-5)
        assert int((row_bias[visual] > 0).sum()) > 0


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_eager_equals_sdpa(family):
    """The bias rides on the float mask eager adds and on the mask SDPA takes: the same logits, greedy tokens."""
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, "image", batch=2, seed=8)
    outputs, original = {}, model.config._attn_implementation
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        try:
            with vtr.patched(model, "divrelay", keep=0.1), torch.no_grad():
                logits = model(**inputs).logits
                tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model))
                outputs[implementation] = (logits, tokens, model.vtr.stats.key_bias)
        finally:
            model.set_attn_implementation(original)
    assert outputs["eager"][2] is not None
    torch.testing.assert_close(outputs["eager"][0], outputs["sdpa"][0], rtol=1e-4, atol=1e-5)
    assert torch.equal(outputs["eager"][1], outputs["sdpa"][1])


def test_keep_one_has_no_bias():
    model, processor = model_of("llava")
    with vtr.patched(model, "divrelay", keep=1.0), torch.no_grad():
        model(**example_inputs(processor, "llava", "image", batch=1))
        assert model.vtr.stats.key_bias is None


def test_an_attention_kernel_without_a_bias_is_refused(monkeypatch):
    """flash-attention takes no additive mask: a clear error before the model runs; the caller's inputs stay."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", "image", batch=1)
    before = {k: v.clone() for k, v in inputs.items()}
    with vtr.patched(model, "divrelay", keep=0.1):
        monkeypatch.setattr(model.vtr.adapter, "decoder_attention_implementation", lambda: "flash_attention_2")
        with pytest.raises(ValueError, match="attn_implementation 'flash_attention_2'.*proportional=False"):
            model(**inputs)
    assert all(torch.equal(v, before[k]) for k, v in inputs.items())
    with vtr.patched(model, "divrelay", keep=0.1, proportional=False):
        monkeypatch.setattr(model.vtr.adapter, "decoder_attention_implementation", lambda: "flash_attention_2")
        with torch.no_grad():
            model(**inputs)  # no bias asked: nothing to refuse


class _KnownSizes:
    """A test reducer's record: the view features it saw (the LLM input's rows are copies of them)."""
    features: list = []


@pytest.fixture
def known_sizes_reducer():
    """Keeps every other patch of each view, unmerged, declaring ``size = 2 + (view + patch) % 5``."""
    from vtr.reducers.base import MergedView, Reducer
    from vtr.registry import register_reducer, unregister_reducer

    @register_reducer("test_known_sizes")
    class KnownSizes(Reducer):
        def plan(self, visual):
            views = [f[v.n_prefix:].clone() for f, v in zip(visual.features, visual.views)]
            _KnownSizes.features.append(views)  # one list per modality (each is planned on its own)
            plans = []
            for index, x in enumerate(views):
                picks = torch.arange(0, len(x), 2)
                plans.append(MergedView(picks, x[picks], sizes=2 + (index + picks) % 5))
            return plans

    yield "test_known_sizes"
    unregister_reducer("test_known_sizes")


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("llava_next", "image"), ("qwen2_vl", "video"),
                                          ("video_llava", "video"), ("llava_onevision", "image+video")])
def test_each_bias_sits_on_its_own_token(known_sizes_reducer, family, kind):
    """Position-exact: each biased column of the LLM input holds a view's patch (found by its embedding, which
    is a copy of that patch's feature), and its bias is the log of the size declared for that patch."""
    model, processor = model_of(family)
    inputs = example_inputs(processor, family, kind, batch=2, seed=9)
    seen, _KnownSizes.features = {}, []

    def record(module, args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"].detach().clone())

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with vtr.patched(model, known_sizes_reducer, keep=0.5), torch.no_grad():
            model(**inputs)
            bias = model.vtr.stats.key_bias
    finally:
        hook.remove()
    embeds = seen["embeds"]
    expected = {}
    for views in _KnownSizes.features:
        for v, x in enumerate(views):
            for p in range(0, len(x), 2):
                expected.setdefault(tuple(x[p].tolist()), []).append(math.log(2 + (v + p) % 5))
    biased = (bias != 0).nonzero().tolist()
    assert len(biased) == sum(len(range(0, len(x), 2)) for views in _KnownSizes.features for x in views)  # sizes >= 2
    for b, c in biased:
        candidates = expected[tuple(embeds[b, c].tolist())]
        assert any(abs(float(bias[b, c]) - e) < 1e-6 for e in candidates)


def test_a_rolled_sliding_window_keeps_each_slot_s_bias():
    """Gemma 3 with a 32-token window over a 37-token reduced prompt: once the window's cache has rolled, slot
    ``s`` holds column ``offset + s`` and gets that column's bias (the merged image tokens are still inside the
    window for the first decode steps); cached greedy logits == the patched no-cache forward (the model's own
    sliding masks over the whole sequence) at every step."""
    from vtr.testing import tiny_model

    model, processor = tiny_model("gemma3", text={"sliding_window": 32})
    inputs = example_inputs(processor, "gemma3", "image", batch=1, seed=3)
    with vtr.patched(model, "divrelay", keep=0.25), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, suppress_tokens=special_ids(model),
                             return_dict_in_generate=True, output_logits=True)
        biased = (model.vtr.stats.key_bias[0] != 0).nonzero().squeeze(1)
        n = len(model.vtr.stats.kept_columns[0])
        assert n > 32 and int(biased.max()) > n - 32  # longer than the window, a biased column still inside it
        width = inputs["input_ids"].shape[1]
        for step in range(8):
            call = {**inputs, "input_ids": out.sequences[:, :width + step],
                    "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, step), value=1)}
            for key in ("token_type_ids", "mm_token_type_ids"):
                if key in inputs:
                    call[key] = torch.nn.functional.pad(inputs[key], (0, step))
            logits = model(**call, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[step], logits, rtol=0, atol=1e-4)


def test_a_mask_free_layer_gets_its_mask_on_the_hidden_states_device():
    """Without a model mask the causal mask is built where the hidden states are (``meta`` stands in for a GPU)."""
    got = biased_mask(None, torch.zeros(1, 4), 1, 2, 4, 2, torch.float32, device="meta")
    assert got.device.type == "meta" and got.shape == (1, 1, 2, 4)
