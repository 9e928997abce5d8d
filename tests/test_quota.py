"""QuoTA on tiny Video-LLaVA and Qwen2-VL, through ``vtr.patch`` with all three scorer kinds, each
property checked against an independent reference: hand-built scoring prompts fed to the unpatched
model, ``F.interpolate`` for the resized frames, eager attention, the unpatched model, batch-1 runs,
a no-cache recompute."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vtr
from helpers import forward_logits, generate_steps, special_ids
from reference import reference_topk
from test_quota_parts import FakeClip, fake_preprocess, fake_tokenizer
from vtr.reducers.quota import assignments
from vtr.testing import example_inputs, random_frames, tiny_model

FAMILIES = ["video_llava", "qwen2_vl"]
QUESTION_SUFFIX = ("\nDoes the image contain sufficient information to answer the given question? A. yes, B. no\n"
                   "Answer with the option's letter directly.")
FAST = dict(decouple_tokens=6)  # random weights never write a list: a few tokens exercise the pass


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family_model(request, models):
    model, processor = models[request.param]
    yield request.param, model, processor
    if vtr.is_patched(model):
        vtr.unpatch(model)


@pytest.fixture(scope="module")
def cache():
    return {}


def video_inputs(processor, family, cache, batch=2, seed=1):
    key = (family, batch, seed)
    if key not in cache:
        cache[key] = example_inputs(processor, family, "video", batch=batch, seed=seed)
    return cache[key]


def expected_budget(keep, patches_per_frame):
    """``keep`` applied per frame (half up, at least 1) and summed, written out independently of vtr."""
    return sum(max(1, min(n, int(np.floor(keep * n + 0.5)))) for n in patches_per_frame)


def frame_patches(family, model, inputs):
    """Per video, the patch count of each frame (Video-LLaVA) or frame group (Qwen2-VL)."""
    if family == "video_llava":
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        return [[side * side] * inputs["pixel_values_videos"].shape[1]] * inputs["pixel_values_videos"].shape[0]
    return [[h * w // 4] * t for t, h, w in inputs["video_grid_thw"].tolist()]


# -- budget --------------------------------------------------------------------------------------
def test_budget_is_exact_and_every_frame_within_cap_and_minimum(family_model, cache):
    family, model, processor = family_model
    inputs = video_inputs(processor, family, cache)
    vtr.patch(model, "quota", keep=0.25, min_per_frame=4, processor=processor, **FAST)
    with torch.no_grad():
        model(**inputs)
    records, stats = assignments(model), model.vtr.stats
    per_video = frame_patches(family, model, inputs)
    assert [r.sample for r in records] == [0, 1] and len(stats.views) == sum(len(v) for v in per_video)
    kept = iter(len(v.kept) for v in stats.views)
    prefix = 1 if family == "video_llava" else 0  # each Video-LLaVA frame keeps its [CLS], outside the budget
    for record, caps in zip(records, per_video):
        counts = [next(kept) for _ in caps]
        assert counts == record.counts and sum(counts) == record.budget == expected_budget(0.25, caps)
        assert all(4 <= n <= c for n, c in zip(counts, caps))
        assert record.scores.shape == (len(caps),) and bool((record.scores >= 0).all())
    assert stats.visual_tokens_out == [r.budget + prefix * len(c) for r, c in zip(records, per_video)]
    assert stats.seconds["quota_score"] > 0 and "quota_decouple" in stats.seconds


# -- scoring -------------------------------------------------------------------------------------
def test_batched_scores_equal_frame_by_frame(family_model, cache):
    family, model, processor = family_model
    inputs = video_inputs(processor, family, cache, batch=1, seed=2)
    scores = {}
    for batch in (1, 3, 64):  # 3: the last batch is a partial one
        with vtr.patched(model, "quota", keep=0.25, processor=processor, decouple=False, score_batch=batch):
            with torch.no_grad():
                model(**inputs)
            scores[batch] = assignments(model)[0].scores
    torch.testing.assert_close(scores[1], scores[64], rtol=0, atol=1e-6)
    torch.testing.assert_close(scores[3], scores[64], rtol=0, atol=1e-6)


def test_self_scores_equal_a_hand_built_prompt_on_the_unpatched_model(models, cache):
    """P("A") for each frame, from the unpatched model given "USER: <one frame> \\n{question}… ASSISTANT:"."""
    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache)
    with vtr.patched(model, "quota", keep=0.25, processor=processor, decouple=False):
        with torch.no_grad():
            model(**inputs)
        records = assignments(model)
    tok, video_id = processor.tokenizer, model.config.video_token_id
    letter = tok.convert_tokens_to_ids("A")
    with torch.no_grad():
        frames = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output
    questions = ["describe the picture in detail please", "is there a red circle above the square? how many objects are there"]
    assert [r.question for r in records] == questions and all(r.objects == [] for r in records)
    for v, (record, question) in enumerate(zip(records[:1], questions)):  # one video is enough: 8 reference passes
        text = tok.encode("USER: ") + [video_id] * frames.shape[1] + tok.encode(
            f"\n{question}{QUESTION_SUFFIX} ASSISTANT:", add_special_tokens=False)
        expected = []
        for f in range(8):
            outputs = BaseModelOutputWithPooling(pooler_output=frames[v * 8 + f][None])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([text]), mm_encoder_outputs={"video": outputs}).logits
            expected.append(logits[0, -1].softmax(-1)[letter])
        torch.testing.assert_close(record.scores.float(), torch.stack(expected), rtol=0, atol=1e-6)


def test_decoupled_objects_become_the_scoring_question(models, cache, monkeypatch):
    """A readable decoupling answer (random weights never write one, so it is stubbed) turns the
    per-frame question into "any object of cat, dog", checked on the unpatched model by hand."""
    import vtr.reducers.quota.context

    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache, batch=1, seed=1)
    tok, video_id = processor.tokenizer, model.config.video_token_id
    prompts = []

    def answer(forward, ids, max_new_tokens, stop_ids):
        prompts.append(ids)
        return tok.encode('Step 1: yes\nStep 2: cat, dog, colour\nStep 3: ["cat", "dog"]', add_special_tokens=False)

    monkeypatch.setattr(vtr.reducers.quota.context, "greedy_text", answer)
    with vtr.patched(model, "quota", keep=0.25, processor=processor):
        with torch.no_grad():
            model(**inputs)
        record, = assignments(model)
    (prompt,) = prompts  # one text-only pass, holding the question and no placeholder
    assert video_id not in prompt.tolist() and "describe the picture in detail please" in tok.decode(prompt)
    assert record.objects == ["cat", "dog"]
    with torch.no_grad():
        frame = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output[:1]
        text = tok.encode("USER: ") + [video_id] * 257 + tok.encode(
            "\nDoes the image contain any object of cat, dog? A. yes, B. no\nAnswer with the option's letter directly. "
            "ASSISTANT:", add_special_tokens=False)
        logits = model(input_ids=torch.tensor([text]),
                       mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=frame)}).logits
    torch.testing.assert_close(record.scores[0].float(), logits[0, -1].softmax(-1)[tok.convert_tokens_to_ids("A")],
                               rtol=0, atol=1e-6)


def test_a_relevant_frame_gets_the_largest_share_and_the_scorer_sees_the_frames(family_model):
    family, model, processor = family_model
    rng = np.random.default_rng(5)
    if family == "video_llava":  # 224 px: what the processor feeds the tower, no resize or crop
        frames = random_frames(rng, n_frames=8, side=224)
        shown = frames
        inputs = processor(text=["USER: <video>\nwhere is the cat? ASSISTANT:"], videos=[frames], return_tensors="pt")
    else:  # 112 px, each frame twice: a frame group's first frame is all of it
        shown = random_frames(rng, n_frames=3, side=112)
        frames = np.repeat(shown, 2, axis=0)
        inputs = processor(text=["USER: <|vision_start|><|video_pad|><|vision_end|>where is the cat? ASSISTANT:"],
                           videos=[frames], return_tensors="pt")
    calls = []

    def scorer(frames, question):
        calls.append((frames, question))
        scores = np.full(len(frames), 0.05)
        scores[1] = 0.9
        return scores

    vtr.patch(model, "quota", keep=0.25, scorer=scorer, processor=processor)
    with torch.no_grad():
        model(**inputs)
    (frames_seen, question), = calls
    assert question == "where is the cat?" and frames_seen.dtype == np.uint8 and frames_seen.shape == shown.shape
    assert np.abs(frames_seen.astype(int) - shown.astype(int)).max() <= 2  # normalisation round trip
    counts = assignments(model)[0].counts
    assert counts[1] == max(counts) and sorted(counts)[-2] < counts[1]


# -- contracts -----------------------------------------------------------------------------------
def test_keep_one_with_uniform_scores_is_the_identity(family_model, cache):
    family, model, processor = family_model
    inputs = video_inputs(processor, family, cache)
    ref_logits = forward_logits(model, inputs)
    ref_seq, ref_steps = generate_steps(model, inputs, n=3)
    with vtr.patched(model, "quota", keep=1.0, scorer=lambda frames, q: np.ones(len(frames)), question="q"):
        assert torch.equal(forward_logits(model, inputs), ref_logits)
        seq, steps = generate_steps(model, inputs, n=3)
        assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)
        assert all(r.scores is None for r in assignments(model))  # nothing to assign: no scoring pass
    assert torch.equal(forward_logits(model, inputs), ref_logits)


def test_cached_generate_equals_no_cache_generate(family_model, cache):
    family, model, processor = family_model
    inputs = video_inputs(processor, family, cache)
    vtr.patch(model, "quota", keep=0.25, processor=processor, **FAST)
    seq, steps = generate_steps(model, inputs, n=4)
    kept = [v.kept for v in model.vtr.stats.views]
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                         suppress_tokens=special_ids(model), use_cache=False)
    assert all(torch.equal(a, v.kept) for a, v in zip(kept, model.vtr.stats.views, strict=True))
    assert torch.equal(out.sequences, seq) and torch.equal(seq[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    torch.testing.assert_close(torch.stack(out.logits, dim=1), steps, rtol=0, atol=1e-5)


def test_cached_generate_equals_patched_forward_recompute(models, cache):
    """With a question-independent scorer the full sequence re-selects the same tokens: logits must match."""
    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache)
    n = 4
    with vtr.patched(model, "quota", keep=0.2, scorer=lambda frames, q: frames.mean(axis=(1, 2, 3)), question="q"):
        seq, steps = generate_steps(model, inputs, n=n)
        full_mask = torch.cat([inputs["attention_mask"], torch.ones_like(seq[:, inputs["input_ids"].shape[1]:])], 1)
        recompute = {**inputs, "input_ids": seq[:, :-1], "attention_mask": full_mask[:, :-1],
                     "position_ids": (full_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)}
        logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)


def test_patched_forward_equals_the_unpatched_model_fed_resized_frames(models, cache):
    """Uniform scores at keep=0.25 give every frame 64 = 8×8 tokens: F.interpolate of its 16×16 grid,
    placed at patch (2i+1, 2j+1), after the frame's [CLS], at the original positions."""
    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache)
    with vtr.patched(model, "quota", keep=0.25, scorer=lambda frames, q: np.ones(len(frames)), question="q"):
        out = forward_logits(model, inputs)
    with torch.no_grad():
        frames = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output
    slots = [1 + (2 * i + 1) * 16 + 2 * j + 1 for i in range(8) for j in range(8)]  # token index in the frame
    video_id, rows, ids, columns = model.config.video_token_id, [], [], []
    for b, row in enumerate(inputs["input_ids"]):
        start = int((row == video_id).nonzero()[0])
        keep = [c for c in range(len(row)) if row[c] != video_id]
        for f in range(8):
            grid = frames[b * 8 + f, 1:].T.reshape(1, -1, 16, 16)
            resized = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)[0].reshape(grid.shape[1], -1).T
            rows.append(torch.cat([frames[b * 8 + f, :1], resized]))
            keep += [start + f * 257] + [start + f * 257 + s for s in slots]
        columns.append(torch.tensor(sorted(keep)))
        ids.append(row[columns[-1]])
    outputs = BaseModelOutputWithPooling(pooler_output=torch.cat(rows)[None])
    mask = torch.stack([inputs["attention_mask"][b, c] for b, c in enumerate(columns)])
    with torch.no_grad():
        ref = model(input_ids=torch.stack(ids), attention_mask=mask, position_ids=torch.stack(columns),
                    mm_encoder_outputs={"video": outputs}).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_cls_attention_frame_reduction_keeps_the_top_of_eager_attention(models, cache):
    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache)
    tower = copy.deepcopy(model.model.video_tower)
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = tower(inputs["pixel_values_videos"].flatten(0, 1), output_attentions=True).attentions
    eager = attentions[-2][:, :, 0, 1:].float().mean(1)  # (16 frames, 256)
    scorer = lambda frames, q: np.linspace(0.1, 0.9, len(frames))  # noqa: E731
    with vtr.patched(model, "quota", keep=0.1, scorer=scorer, question="q", frame_reduction="cls_attention"):
        with torch.no_grad():
            model(**inputs)
        kept, counts = [v.kept for v in model.vtr.stats.views], [n for r in assignments(model) for n in r.counts]
    assert len(set(counts)) > 1  # frames keep different numbers of tokens
    assert all(torch.equal(k, reference_topk(s[None], n)[0]) for k, s, n in zip(kept, eager, counts, strict=True))


def test_batch_equals_single(models, cache):
    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache)
    with vtr.patched(model, "quota", keep=0.25, processor=processor, **FAST):
        seq, steps = generate_steps(model, inputs, n=3)
        views = model.vtr.stats.views
        for b in range(2):
            single = video_inputs(processor, "video_llava", cache, batch=1, seed=1 + b)
            seq1, steps1 = generate_steps(model, single, n=3)
            row = [v for v in views if v.sample == b]
            assert all(torch.equal(v1.kept, v.kept) for v1, v in zip(model.vtr.stats.views, row, strict=True))
            assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, inputs["input_ids"].shape[1]:])
            torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


# -- the three scorer kinds through vtr.patch --------------------------------------------------------
@pytest.mark.parametrize("scorer", ["self", "clip", "callable"])
def test_every_scorer_kind_works_through_patch(family_model, cache, scorer):
    family, model, processor = family_model
    inputs = video_inputs(processor, family, cache)
    settings = {"self": dict(**FAST), "clip": dict(scorer="clip", clip_model=FakeClip(), clip_preprocess=fake_preprocess,
                                                   clip_tokenizer=fake_tokenizer),
                "callable": dict(scorer=lambda frames, q: frames[..., 0].mean(axis=(1, 2)) + 1)}[scorer]
    vtr.patch(model, "quota", keep=0.25, processor=processor, **settings)
    seq = model.generate(**inputs, max_new_tokens=2, do_sample=False, suppress_tokens=special_ids(model))
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(seq[:, :prompt_len], inputs["input_ids"]) and seq.shape[1] == prompt_len + 2
    records, stats = assignments(model), model.vtr.stats
    assert len(records) == 2 and all(sum(r.counts) == r.budget for r in records)
    assert sum(stats.visual_tokens_out) < sum(stats.visual_tokens_in)
    if scorer == "callable":  # the weights are the scores' squares, normalised
        for r in records:
            w = (100 * r.scores) ** 2
            torch.testing.assert_close(r.weights, w / w.sum())


# -- errors --------------------------------------------------------------------------------------
def test_clear_errors_leave_the_model_working(models, cache):
    model, processor = models["video_llava"]
    inputs = video_inputs(processor, "video_llava", cache)
    ref = forward_logits(model, inputs)
    bad_settings = [(dict(scorer="nope"), ValueError, "scorer must be one of"),
                    (dict(scorer="clip"), TypeError, "clip_model"),
                    (dict(question=""), ValueError, "question must be"),
                    (dict(frame_reduction="pool"), ValueError, "frame_reduction"),
                    (dict(weight_exponent=0), ValueError, "weight_exponent"),
                    (dict(min_per_frame=0), ValueError, "min_per_frame"),
                    (dict(processor=object()), TypeError, "processor")]
    for settings, error, message in bad_settings:
        with pytest.raises(error, match=message):
            vtr.patch(model, "quota", **settings)
        assert not vtr.is_patched(model)
    images = example_inputs(processor, "video_llava", "image", batch=1, seed=1)
    no_question = processor(text=["USER: <video> ASSISTANT:"], videos=[random_frames(np.random.default_rng(0))],
                            return_tensors="pt")
    vtr.patch(model, "quota", keep=0.25, processor=processor, decouple=False)
    calls = [(images, "needs video input"), (no_question, "no text after its video")]
    for call, message in calls:
        with pytest.raises(ValueError, match=message):
            model(**call)
        with pytest.raises(ValueError, match=message):
            model.generate(**call, max_new_tokens=1)
    model.vtr.config.question = "where is the cat?"  # the override makes the same prompt work
    with torch.no_grad():
        model(**no_question)
    assert assignments(model)[0].question == "where is the cat?"
    model.vtr.config.question, model.vtr.config.processor = None, None
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        model(**inputs)
    model.vtr.config.scorer = lambda frames, q: np.ones(len(frames) - 1)
    model.vtr.config.question = "q"
    with pytest.raises(ValueError, match="scorer returned 7 scores for 8 frames"):
        model(**inputs)
    vtr.unpatch(model)
    assert torch.equal(forward_logits(model, inputs), ref)


def test_cost_benchmark_runs(tmp_path):
    from benchmarks.quota_cost import main

    result = main(["--repeats", "1", "--new-tokens", "2", "--decouple-tokens", "2", "--out", str(tmp_path / "q.json")])
    assert (tmp_path / "q.json").exists() and set(result["seconds"]) == {"answer", "quota", "score", "decouple"}
    assert result["analytic"]["7b_shape"]["scoring_over_answer_prefill_flops"] > 1
