"""Every ``generate`` mode on a patched model, against independent references.

References: the unpatched model (``keep=1.0``), batch-1 runs (for rows expanded by beams and
``num_return_sequences``), and the patched model's own plain cached greedy run (for modes that must
not change the result: no cache, static cache, assisted decoding).
"""
import pytest
import torch

import vtr
from helpers import special_ids
from vtr.testing import example_inputs, tiny_model

FAMILIES = ["llava", "qwen2_vl"]
IN_LLM = {"fastv": {"keep": 0.5, "layer": 1}, "aim": {"keep": 0.5}, "atp": {}}
#: reducers that need another family or video input than the llava image case below
OTHER_FAMILY = {"globalcom2", "quota"}


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    model, processor = tiny_model(request.param)
    return request.param, model, processor


def greedy(model, inputs, n=3, **kwargs):
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False, suppress_tokens=special_ids(model),
                         return_dict_in_generate=True, output_logits=True, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


@pytest.fixture(scope="module")
def llava():
    return tiny_model("llava")


@pytest.mark.parametrize("reducer", sorted(set(vtr.list_reducers()) - OTHER_FAMILY))
def test_num_return_sequences_returns_the_prompt_on_every_row(llava, reducer):
    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=2, seed=2)
    with vtr.patched(model, reducer):
        torch.manual_seed(0)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=True, num_return_sequences=2,
                             suppress_tokens=special_ids(model))
    width = inputs["input_ids"].shape[1]
    assert out.shape == (4, width + 2)
    assert torch.equal(out[:, :width], inputs["input_ids"].repeat_interleave(2, dim=0))


@pytest.mark.parametrize("reducer", ["fastervlm", "fastv"])
def test_identity_with_beams_and_sampling(family_model, reducer):
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=2, seed=1)
    modes = [dict(num_beams=2, num_return_sequences=2, do_sample=False),
             dict(do_sample=True, num_return_sequences=2, top_k=5)]
    references = []
    for mode in modes:
        torch.manual_seed(0)
        references.append(model.generate(**inputs, max_new_tokens=3, suppress_tokens=special_ids(model), **mode))
    with vtr.patched(model, reducer, keep=1.0):
        for mode, reference in zip(modes, references):
            torch.manual_seed(0)
            out = model.generate(**inputs, max_new_tokens=3, suppress_tokens=special_ids(model), **mode)
            assert torch.equal(out, reference), mode


@pytest.mark.parametrize("reducer", ["fastervlm", "divrelay", *IN_LLM])  # divrelay: proportional attention
def test_beams_batch_equals_single(family_model, reducer):
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=2, seed=4)
    settings = IN_LLM.get(reducer, {"keep": 0.25})
    with vtr.patched(model, reducer, **settings):
        out = model.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False,
                             suppress_tokens=special_ids(model))
        width = inputs["input_ids"].shape[1]
        for b in range(2):
            single = example_inputs(processor, family, "image", batch=1, seed=4 + b)
            one = model.generate(**single, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False,
                                 suppress_tokens=special_ids(model))
            assert torch.equal(out[2 * b:2 * b + 2, width:], one[:, single["input_ids"].shape[1]:])
            assert torch.equal(out[2 * b:2 * b + 2, :width], inputs["input_ids"][b:b + 1].expand(2, -1))


#: reducers whose decode steps run vtr hooks: in-LLM pruning, and divrelay's proportional attention
HOOKED = {**IN_LLM, "divrelay": {"keep": 0.1}}


@pytest.mark.parametrize("reducer", sorted(HOOKED))
def test_in_llm_modes_equal_cached_greedy(family_model, reducer):
    """No cache, a static cache and assisted decoding (prompt lookup, an assistant model) give the cached
    greedy result: the selection is made once, on the prompt, and decoding attends to what was kept (with
    divrelay, with each merged token's size bias on the static buffer's columns too)."""
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=2, seed=5)
    single = example_inputs(processor, family, "image", batch=1, seed=5)  # assisted decoding takes batch 1
    assistant, _ = tiny_model(family, seed=1)
    with vtr.patched(model, reducer, **HOOKED[reducer]):
        seq, logits = greedy(model, inputs)
        assert model.vtr.stats.visual_tokens_out < model.vtr.stats.visual_tokens_in
        for mode in (dict(use_cache=False), dict(cache_implementation="static")):
            seq2, logits2 = greedy(model, inputs, **mode)
            assert torch.equal(seq2, seq), mode
            torch.testing.assert_close(logits2, logits, rtol=0, atol=1e-5)
        seq1, logits1 = greedy(model, single)
        # batch 1 has no padding: the model passes no mask, and a static buffer is wider than the prompt
        for mode in (dict(cache_implementation="static"), dict(prompt_lookup_num_tokens=2), dict(assistant_model=assistant)):
            seq2, logits2 = greedy(model, single, **mode)
            assert torch.equal(seq2, seq1), list(mode)
            torch.testing.assert_close(logits2, logits1, rtol=0, atol=1e-5)


# -- multi-turn: sequences + past_key_values back into generate -------------------------------------------
VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def next_turn(inputs, sequences, new):
    """The caller's kwargs for the next turn: the returned sequences, then ``new`` ``(B, T)`` token ids."""
    ids = torch.cat([sequences, new], dim=1)
    turn = {"input_ids": ids, "attention_mask": torch.cat(
        [inputs["attention_mask"], torch.ones_like(ids[:, inputs["input_ids"].shape[1]:])], dim=1)}
    if "mm_token_type_ids" in inputs:
        turn["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(ids[:, inputs["input_ids"].shape[1]:])], dim=1)
    return turn


def dict_greedy(model, inputs, n, **kwargs):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, suppress_tokens=special_ids(model),
                          return_dict_in_generate=True, output_logits=True, **kwargs)


@pytest.mark.parametrize("reducer, settings", [("fastervlm", {"keep": 0.5}), ("fastv", {"keep": 0.5, "layer": 1}),
                                                ("atp", {}), ("divrelay", {"keep": 0.1})])
def test_continuing_equals_one_longer_generate(family_model, reducer, settings):
    """Three tokens, then three more from the returned cache == six tokens in one call (nothing new added)."""
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=2, seed=6)
    with vtr.patched(model, reducer, **settings):
        full = dict_greedy(model, inputs, 6)
        first = dict_greedy(model, inputs, 3)
        turn = next_turn(inputs, first.sequences[:, :-1], first.sequences[:, -1:])
        second = dict_greedy(model, turn, 3, past_key_values=first.past_key_values)
    assert torch.equal(second.sequences, full.sequences)
    torch.testing.assert_close(torch.stack(second.logits, 1), torch.stack(full.logits, 1)[:, 3:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("reducer, settings", [("fastervlm", {"keep": 0.5}), ("fastv", {"keep": 1.0, "layer": 1}),
                                                ("divrelay", {"keep": 0.1})])
def test_new_text_turn_equals_one_longer_generate(family_model, reducer, settings):
    """A new text turn on the returned cache == one generate over the whole conversation (a reducer whose
    selection does not read the question, or keep=1.0)."""
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=2, seed=7)
    new = torch.tensor([[15, 16, 17], [18, 19, 20]])
    with vtr.patched(model, reducer, **settings):
        first = dict_greedy(model, inputs, 3)
        turn = next_turn(inputs, first.sequences, new)
        whole = dict_greedy(model, {**turn, **{k: inputs[k] for k in VISUAL_KEYS if k in inputs}}, 3)
        second = dict_greedy(model, turn, 3, past_key_values=first.past_key_values)
    assert torch.equal(second.sequences, whole.sequences)
    torch.testing.assert_close(torch.stack(second.logits, 1), torch.stack(whole.logits, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("reducer", ["fastervlm", "divrelay"])
def test_new_image_turn_equals_one_generate_over_both_images(family_model, reducer):
    """The new turn brings its own image (its pixels only): reduced like a first turn, positions after the
    cached ones; equals one generate over both images (divrelay: both images' size biases in place)."""
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=1, seed=0)
    other = example_inputs(processor, family, "image", batch=1, seed=3)
    with vtr.patched(model, reducer, keep=0.5):
        first = dict_greedy(model, inputs, 3)
        turn = next_turn(inputs, first.sequences, other["input_ids"])
        if "mm_token_type_ids" in other:
            turn["mm_token_type_ids"][:, -other["input_ids"].shape[1]:] = other["mm_token_type_ids"]
        keys = [k for k in VISUAL_KEYS if k in inputs]
        whole = dict_greedy(model, {**turn, **{k: torch.cat([inputs[k], other[k]]) for k in keys}}, 3)
        assert sum(model.vtr.stats.visual_tokens_out) < sum(model.vtr.stats.visual_tokens_in)
        second = dict_greedy(model, {**turn, **{k: other[k] for k in keys}}, 3, past_key_values=first.past_key_values)
    assert torch.equal(second.sequences, whole.sequences)
    torch.testing.assert_close(torch.stack(second.logits, 1), torch.stack(whole.logits, 1), rtol=0, atol=1e-5)


def test_continuation_refuses_a_foreign_sequence(llava):
    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=1, seed=1)
    with vtr.patched(model, "fastervlm", keep=0.5):
        first = dict_greedy(model, inputs, 2)
        turn = next_turn(inputs, first.sequences, torch.tensor([[15]]))
        turn["input_ids"][0, 3] += 1
        with pytest.raises(ValueError, match="input_ids must start with"):
            model.generate(**turn, max_new_tokens=1, past_key_values=first.past_key_values)


def test_qwen2_vl_rope_deltas_follow_the_reduced_cache():
    """After a patched generate, Qwen2-VL's own numbering of the next token (real cached tokens +
    rope_deltas) is the one after an unpatched generate, though the cache holds fewer tokens."""
    model, processor = tiny_model("qwen2_vl")
    inputs = example_inputs(processor, "qwen2_vl", "image", batch=2, seed=2)
    dict_greedy(model, inputs, 2)  # two tokens: the first one is cached
    next_unpatched = inputs["attention_mask"].sum(dim=1, keepdim=True) + 1 + model.model.rope_deltas
    model.model.rope_deltas = None
    with vtr.patched(model, "fastervlm", keep=0.25):
        dict_greedy(model, inputs, 2)
        stats = model.vtr.stats
        dropped = torch.tensor(stats.visual_tokens_in) - torch.tensor(stats.visual_tokens_out)
        assert bool((dropped > 0).all())
        cached = inputs["attention_mask"].sum(dim=1, keepdim=True) - dropped[:, None] + 1
        assert torch.equal(cached + model.model.rope_deltas, next_unpatched)


# -- model objects: copies, pickling, saving, threads, configs --------------------------------------------
def test_deepcopy_is_patched_on_its_own_weights(llava):
    import copy

    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=1, seed=8)
    with vtr.patched(model, "fastervlm", keep=0.25):
        reduced = model(**inputs).logits
        twin = copy.deepcopy(model)
        assert twin.vtr is not model.vtr and twin.vtr.model is twin and twin.vtr.config is not model.vtr.config
        torch.testing.assert_close(twin(**inputs).logits, reduced, rtol=0, atol=0)
        with torch.no_grad():
            twin.lm_head.weight.mul_(2)  # the copy's own weights, not the original's, must drive its forward
        assert not torch.allclose(twin(**inputs).logits, reduced)
        torch.testing.assert_close(model(**inputs).logits, reduced, rtol=0, atol=0)
    vtr.unpatch(twin)
    assert "forward" not in twin.__dict__ and not vtr.is_patched(twin)
    with torch.no_grad():
        assert twin(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_pickle_and_save_pretrained(tmp_path):
    """(transformers' models pickle until their first forward installs its output-capturing hooks, patched
    or not; so the model is pickled fresh and the references computed on a second build.)"""
    import io

    model, processor = tiny_model("llava")
    reference_model, _ = tiny_model("llava")
    inputs = example_inputs(processor, "llava", "image", batch=1, seed=9)
    with torch.no_grad():
        unpatched = reference_model(**inputs).logits
    with vtr.patched(model, "fastervlm", keep=0.25):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        with torch.no_grad():
            reduced = model(**inputs).logits
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)  # a pickled patched model comes back patched
        assert vtr.is_patched(loaded) and loaded.vtr.model is loaded
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, reduced, rtol=0, atol=0)
        model.save_pretrained(tmp_path)  # weights and config only: the saved model loads unpatched
    reloaded = type(model).from_pretrained(tmp_path)
    assert not vtr.is_patched(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, unpatched, rtol=0, atol=0)


def test_a_forward_during_another_threads_generate_is_reduced(llava):
    """Per-call state is per thread; calls on one model are serialised (one lock per patched model)."""
    import threading

    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=1, seed=10)
    started = threading.Event()

    class Streamer:  # signals from inside the other thread's generate, then keeps it busy a little
        def put(self, value):
            started.set()
            threading.Event().wait(0.05)

        def end(self):
            pass

    with vtr.patched(model, "fastervlm", keep=0.25):
        with torch.no_grad():
            expected = model(**inputs).logits
        worker = threading.Thread(target=lambda: model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                                                streamer=Streamer()))
        worker.start()
        assert started.wait(60)
        with torch.no_grad():
            during = model(**inputs).logits
        worker.join()
    assert during.shape == expected.shape
    torch.testing.assert_close(during, expected, rtol=0, atol=0)


def test_config_objects_keep_the_callers_objects():
    """``vtr.patch(model, SomeConfig(processor=p, scorer=s))`` keeps ``p`` and ``s`` themselves (no deep copy)."""
    from vtr.reducers.quota.reducer import QuotaConfig

    model, processor = tiny_model("video_llava")
    scorer = lambda frames, query: torch.ones(len(frames))  # noqa: E731 (any callable scorer)
    with vtr.patched(model, QuotaConfig(keep=0.5, scorer=scorer, processor=processor)):
        assert model.vtr.config.scorer is scorer and model.vtr.config.processor is processor


# -- forward parity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("reducer, keep", [("fastervlm", 1.0), ("fastervlm", 0.5), ("fastv", 1.0), ("fastv", 0.5)])
def test_inputs_embeds_with_pixels_is_reduced_like_input_ids(family_model, reducer, keep):
    """``inputs_embeds`` (no ``input_ids``) with pixels: placeholders found from the embeddings, the embeddings
    gathered with the kept columns (in-LLM: pruned inside the LLM), at the positions the unpatched model gives
    embeddings alone — the same call as with ``input_ids`` and those positions (Qwen2-VL cannot compute M-RoPE
    without ids: it numbers the columns 0..N-1 on its three rows). keep=1.0 is the unpatched embeddings call."""
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=2, seed=11)
    embeds = {k: v for k, v in inputs.items() if k != "input_ids"}
    embeds["inputs_embeds"] = model.get_input_embeddings()(inputs["input_ids"]).detach()
    batch, width = inputs["input_ids"].shape
    positions = {} if family == "llava" else {
        "position_ids": torch.arange(width).view(1, 1, -1).expand(3, batch, -1)}

    def fresh(call):  # Qwen2-VL's embeddings-only numbering depends on rope_deltas left by earlier calls
        if hasattr(model.model, "rope_deltas"):
            model.model.rope_deltas = None
        return call()

    def answer(call_inputs):
        return model.generate(**call_inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model))

    with torch.no_grad():
        unpatched_logits = fresh(lambda: model(**embeds).logits)
    unpatched_answer = fresh(lambda: answer(embeds))
    settings = {"layer": 1} if reducer == "fastv" else {}
    with vtr.patched(model, reducer, keep=keep, **settings):
        with torch.no_grad():
            by_embeds = fresh(lambda: model(**embeds).logits)
            assert (model.vtr.stats.visual_tokens_out < model.vtr.stats.visual_tokens_in) == (keep < 1)
            by_ids = fresh(lambda: model(**inputs, **positions).logits)
        assert (by_ids.shape[1] < width) == (keep < 1)
        torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=1e-6)
        answer_embeds = fresh(lambda: answer(embeds))
        answer_ids = fresh(lambda: answer(inputs))
    assert answer_embeds.shape == (batch, 3)  # generate from embeddings returns the new tokens only
    if keep == 1.0:
        torch.testing.assert_close(by_embeds, unpatched_logits, rtol=0, atol=0)
        assert torch.equal(answer_embeds, unpatched_answer)
    if family == "llava":  # the same positions either way
        assert torch.equal(answer_embeds, answer_ids[:, -3:])


@pytest.mark.parametrize("reducer, settings", [("fastervlm", {"keep": 0.5}), ("fastv", {"keep": 0.5, "layer": 1}),
                                                ("fastv", {"keep": 1.0, "layer": 1})])
def test_labels_tuple_and_shift_labels(llava, reducer, settings):
    """``return_dict=False`` with labels returns ``(loss, logits, ...)``; ``shift_labels`` (each row's own
    target) are gathered at the kept rows; at keep=1.0 the loss is the unpatched one."""
    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=2, seed=12)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    shift = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        unpatched = model(**inputs, labels=labels).loss
    with vtr.patched(model, reducer, **settings), torch.no_grad():
        output = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
        shifted = model(**inputs, shift_labels=shift, labels=labels)
        kept = torch.stack(model.vtr.stats.kept_columns)
    torch.testing.assert_close(as_tuple[0], output.loss)
    torch.testing.assert_close(as_tuple[1], output.logits)
    as_dict = output.to_tuple()  # the dict output's tuple view is the return_dict=False output, loss first
    assert len(as_dict) == len(as_tuple) and output[0] is output.loss
    for a, b in zip(as_dict[:2], as_tuple[:2]):
        torch.testing.assert_close(a, b)
    if reducer != "fastervlm":  # in-LLM: every kept row is scored on its own next caller token either way
        torch.testing.assert_close(shifted.loss, output.loss, rtol=0, atol=1e-6)
    else:  # pre-LLM: shift_labels are gathered like labels; a reference from the kept columns
        target = shift.gather(1, kept.clamp(min=0)).masked_fill(kept < 0, -100)
        reference = torch.nn.functional.cross_entropy(shifted.logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        torch.testing.assert_close(shifted.loss, reference, rtol=0, atol=1e-5)
    if settings["keep"] == 1.0:
        torch.testing.assert_close(output.loss, unpatched, rtol=0, atol=1e-6)


def test_sequence_inputs_not_aligned_with_the_prompt_are_refused(llava):
    """labels / shift_labels / masks are gathered at the kept prompt columns, so with visual inputs they must have
    input_ids' shape: one sized like the *reduced* logits (transformers' shift_labels test builds them so) is a
    clear error naming the argument, raised before anything runs, and the model still answers as configured."""
    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=2, seed=12)
    with vtr.patched(model, "fastervlm", keep=0.5), torch.no_grad():
        reference = model(**inputs).logits
        short = torch.zeros(reference.shape[:2], dtype=torch.long)  # (B, reduced length)
        for key in ("labels", "shift_labels"):
            with pytest.raises(ValueError, match=rf"{key} has shape \(2, {short.shape[1]}\).*input_ids, shape \(2, "):
                model(**inputs, **{key: short})
        square = torch.ones(2, 1, inputs["input_ids"].shape[1], inputs["input_ids"].shape[1])
        with pytest.raises(ValueError, match="attention_mask is a custom 4-D mask"):
            model(**{**inputs, "attention_mask": square})
        assert torch.equal(model(**inputs).logits, reference)


def test_text_only_forward_with_a_custom_4d_mask(llava):
    """A custom 4-D mask (shared-prefix packing) on a text-only call runs and matches the unpatched model."""
    model, _ = llava
    ids = torch.tensor([[10, 11, 12, 13]])
    mask = torch.tril(torch.ones(1, 1, 4, 4))
    with torch.no_grad():
        reference = model(ids, attention_mask=mask, position_ids=torch.arange(4)[None]).logits
        with vtr.patched(model, "fastervlm", keep=0.5):
            patched = model(ids, attention_mask=mask, position_ids=torch.arange(4)[None]).logits
    torch.testing.assert_close(patched, reference, rtol=0, atol=0)


class RecordingStreamer:
    """A ``BaseStreamer`` that keeps what ``generate`` hands it."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("reducer, settings", [("fastervlm", {"keep": 0.25}), ("fastv", {"keep": 0.5, "layer": 1})])
def test_streamer_sees_the_callers_prompt_then_the_new_tokens(family_model, reducer, settings):
    """A streamer gets what it gets from the unpatched model's generate: the caller's prompt first (not the
    reduced one, which would print fewer image placeholders with ``TextStreamer(skip_prompt=False)``), then
    each generated token; ``TextStreamer`` prints the decoded answer."""
    from transformers import TextStreamer

    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=1, seed=3)
    with vtr.patched(model, reducer, **settings):
        streamer = RecordingStreamer()
        sequences = model.generate(**inputs, max_new_tokens=3, do_sample=False, streamer=streamer,
                                   suppress_tokens=special_ids(model))
        assert model.vtr.stats.visual_tokens_out < model.vtr.stats.visual_tokens_in
        assert torch.equal(streamer.puts[0], inputs["input_ids"])
        new = torch.cat([p.reshape(-1) for p in streamer.puts[1:]])
        assert torch.equal(new, sequences[0, inputs["input_ids"].shape[1]:]) and streamer.ended
        printed = []
        text = TextStreamer(processor.tokenizer, skip_prompt=False)
        text.on_finalized_text = lambda chunk, stream_end=False: printed.append(chunk)
        model.generate(**inputs, max_new_tokens=3, do_sample=False, streamer=text, suppress_tokens=special_ids(model))
    assert "".join(printed) == processor.tokenizer.decode(sequences[0])


@pytest.mark.parametrize("reducer, settings", [("fastervlm", {"keep": 0.5}), ("fastv", {"keep": 0.5, "layer": 1}),
                                                ("divrelay", {"keep": 0.1})])
def test_generate_with_automatic_compilation(llava, reducer, settings):
    """A compileable (static) cache with a compile_config (forced on CPU, dynamo's eager backend) gives the
    plain greedy result. Pre-LLM reducers: the decode steps run compiled. In-LLM reducers and proportional
    attention: their per-layer hooks run in every decode step and cannot be traced, so generate's automatic
    compilation is off."""
    from transformers import CompileConfig

    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=2, seed=3)
    config = CompileConfig(backend="eager")
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told otherwise
    model.__dict__.pop("_compiled_call", None)
    with vtr.patched(model, reducer, **settings):
        reference, _ = greedy(model, inputs)
        compiled, _ = greedy(model, inputs, cache_implementation="static", compile_config=config)
        assert torch.equal(compiled, reference)
        assert hasattr(model, "_compiled_call") == (reducer == "fastervlm")
    model.__dict__.pop("_compiled_call", None)


@pytest.mark.parametrize("reducer", ["fastervlm", "divrelay", *IN_LLM])
def test_a_model_as_its_own_assistant(family_model, reducer):
    """``assistant_model=model`` (transformers' own assisted-decoding test does this): the assistant's nested
    generate runs with its own reduction while the outer call's in-LLM hooks are lifted, then the outer call goes
    on; greedy assisted decoding equals plain greedy, and the stats are the outer call's."""
    family, model, processor = family_model
    inputs = example_inputs(processor, family, "image", batch=1, seed=5)
    settings = IN_LLM.get(reducer, {"keep": 0.5})
    with vtr.patched(model, reducer, **settings):
        reference, logits = greedy(model, inputs, n=5)
        per_layer = model.vtr.stats.visual_tokens_per_layer
        assisted, assisted_logits = greedy(model, inputs, n=5, assistant_model=model)
        assert torch.equal(assisted, reference)
        torch.testing.assert_close(assisted_logits, logits, rtol=0, atol=1e-5)
        assert model.vtr.stats.visual_tokens_per_layer == per_layer


def test_forward_without_a_mask_or_cache_is_not_read_as_packed(family_model):
    """A batch-1 forward with no attention_mask and use_cache=False: the kept columns' original positions have
    gaps, which transformers reads as packed-sequence starts when it has neither mask nor cache; the patched
    call gives the LLM a mask, so the logits equal the cached call's."""
    family, model, processor = family_model
    inputs = {k: v for k, v in example_inputs(processor, family, "image", batch=1, seed=5).items()
              if k != "attention_mask"}
    with vtr.patched(model, "fastervlm", keep=0.5), torch.no_grad():
        cached = model(**inputs).logits
        assert cached.shape[1] < inputs["input_ids"].shape[1]
        torch.testing.assert_close(model(**inputs, use_cache=False).logits, cached, rtol=0, atol=1e-6)


def test_packed_rows_are_refused_where_they_cannot_be_reduced(llava):
    """Padding-free packing (position_ids restarting inside a row, no mask): an in-LLM reducer reads one attention
    pattern per row and cannot tell the sequences apart, so it refuses, naming the input; on a family with 1-D
    positions a pre-LLM reduction would leave position gaps that read as sequence starts, so it refuses too
    (keep=1.0 drops nothing and runs; Qwen2-VL's packed rows are reduced: test_qwen2_vl). Plain explicit
    positions are not packing."""
    model, processor = llava
    inputs = example_inputs(processor, "llava", "image", batch=2, seed=5)
    mask = inputs["attention_mask"].bool()
    packed = {"input_ids": inputs["input_ids"][mask][None], "pixel_values": inputs["pixel_values"],
              "position_ids": torch.cat([torch.arange(n) for n in mask.sum(1).tolist()])[None]}
    with vtr.patched(model, "fastv", keep=0.5, layer=1), torch.no_grad():
        with pytest.raises(ValueError, match="position_ids pack several sequences into one row"):
            model(**packed, use_cache=False)
        single = {k: v[:1] for k, v in inputs.items() if k != "attention_mask"}
        width = single["input_ids"].shape[1]
        model(**single, position_ids=torch.arange(width)[None])  # one sequence: runs
    with vtr.patched(model, "fastervlm", keep=1.0), torch.no_grad():  # nothing dropped: the identity
        assert model(**packed, use_cache=False).logits.shape[1] == packed["input_ids"].shape[1]
    with vtr.patched(model, "fastervlm", keep=0.5), torch.no_grad():  # 1-D positions: gaps would read as starts
        with pytest.raises(ValueError, match="position_ids pack several sequences.*gaps"):
            model(**packed, use_cache=False)
