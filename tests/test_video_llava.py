"""Property suite for Video-LLaVA (images, 8-frame videos, and both in one prompt), each property
checked against an independent reference: the unpatched model, eager attention on a copy of the
tower, a hand-built prompt holding only the kept tokens, batch-1 runs, a no-cache recompute."""
import copy

import numpy as np
import pytest
import torch

import vtr
from helpers import forward_logits, generate_steps
from reference import reference_topk
from vtr.testing import example_inputs, random_frames, random_image, tiny_model

KINDS = ["image", "video", "image+video"]
FRAMES, PER_FRAME, PATCHES = 8, 257, 256
KEEP = 0.1  # 25.6 -> 26 patches per image or frame
K = 26


@pytest.fixture(scope="module")
def built():
    return tiny_model("video_llava")


@pytest.fixture
def vl(built):
    """The module's tiny model, unpatched again after each test."""
    yield built
    if vtr.is_patched(built[0]):
        vtr.unpatch(built[0])


@pytest.fixture(scope="module")
def cache():
    return {}


def inputs_of(built, cache, kind, batch=2, seed=1):
    key = ("inputs", kind, batch, seed)
    if key not in cache:
        cache[key] = example_inputs(built[1], "video_llava", kind, batch=batch, seed=seed)
    return cache[key]


def placeholders(model):
    return [model.config.image_token_id, model.config.video_token_id]






def unpatched_reference(built, cache, kind, batch=2):
    """Logits and greedy steps of the unpatched model (computed once per kind and batch)."""
    key = ("reference", kind, batch)
    if key not in cache:
        model, inputs = built[0], inputs_of(built, cache, kind, batch)
        cache[key] = (forward_logits(model, inputs), *generate_steps(model, inputs))
    return cache[key]


def eager_cls_attention(tower, pixel_values, layer=-2):
    """FasterVLM's reference signal: eager attention on a copy of the tower, [CLS] row, head mean.
    ``pixel_values``: ``(n, 3, H, W)`` → ``(n, 256)``."""
    tower = copy.deepcopy(tower)
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = tower(pixel_values, output_attentions=True).attentions
    return attentions[layer][:, :, 0, 1:].float().mean(1)


def oracle_forward(model, inputs, image_kept, frame_kept, positions="original", **kwargs):
    """The unpatched model given a prompt that holds only the kept tokens, built by hand.

    ``image_kept[i]``: kept patch indices of image i; ``frame_kept[v * 8 + f]``: of frame f of video v.
    Each frame keeps its [CLS] (token 0 of its 257). Rows must keep the same number of tokens.
    """
    image_id, video_id = placeholders(model)
    with torch.no_grad():
        images = videos = None
        if inputs.get("pixel_values") is not None:
            images = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
        if inputs.get("pixel_values_videos") is not None:
            videos = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"], return_dict=True)
    image_rows, video_rows, ids, masks, cols_of_rows = [], [], [], [], []
    n_image = n_video = 0
    for b, row in enumerate(inputs["input_ids"].tolist()):
        cols, col = [], 0
        while col < len(row):
            if row[col] == image_id:
                kept = image_kept[n_image].tolist()
                cols += [col + p for p in kept]
                image_rows.append(images.pooler_output[n_image][kept])
                n_image, col = n_image + 1, col + PATCHES
            elif row[col] == video_id:
                for f in range(FRAMES):
                    frame = videos.pooler_output[n_video * FRAMES + f]  # (257, D), [CLS] first
                    kept = [0] + [1 + p for p in frame_kept[n_video * FRAMES + f].tolist()]
                    cols += [col + f * PER_FRAME + t for t in kept]
                    video_rows.append(frame[kept])
                n_video, col = n_video + 1, col + FRAMES * PER_FRAME
            else:
                cols.append(col)
                col += 1
        cols = torch.tensor(cols)
        ids.append(inputs["input_ids"][b, cols])
        masks.append(inputs["attention_mask"][b, cols])
        cols_of_rows.append(cols)
    mm = {}
    if image_rows:
        images.pooler_output = torch.cat(image_rows)[None]
        mm["image"] = images
    if video_rows:
        videos.pooler_output = torch.cat(video_rows)[None]
        mm["video"] = videos
    call = dict(kwargs)
    if "labels" in call:
        call["labels"] = torch.stack([call["labels"][b, c] for b, c in enumerate(cols_of_rows)])
    if positions == "original":
        call["position_ids"] = torch.stack(cols_of_rows)
    with torch.no_grad():
        return model(input_ids=torch.stack(ids), attention_mask=torch.stack(masks), mm_encoder_outputs=mm, **call)


def vtr_hooks(model):
    """Hooks installed by vtr (transformers installs its own output-capturing hooks on first use)."""
    hooks = [h for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for h in d.values()]
    return [h for h in hooks if getattr(h, "__module__", "").startswith("vtr")]


def split_views(stats, inputs):
    """Kept patches of the image views and of the frame views of the last call."""
    n_images = 0 if inputs.get("pixel_values") is None else inputs["pixel_values"].shape[0]
    kept = [v.kept for v in stats.views]
    return kept[:n_images], kept[n_images:]


# -- identity and unpatch ---------------------------------------------------------------------------
# a video-only batch of 2 is the costliest input here, and image+video covers padded video rows
@pytest.mark.parametrize("kind,batch", [("image", 2), ("video", 1), ("image+video", 2)])
def test_keep_one_is_identity(vl, cache, kind, batch):
    model, _ = vl
    inputs = inputs_of(vl, cache, kind, batch)
    ref_logits, ref_seq, ref_steps = unpatched_reference(vl, cache, kind, batch)
    for reducer, positions in [("fastervlm", "original"), ("random", "renumber")]:
        with vtr.patched(model, reducer, keep=1.0, positions=positions):
            assert torch.equal(forward_logits(model, inputs), ref_logits)
            seq, steps = generate_steps(model, inputs)
            assert torch.equal(seq, ref_seq) and torch.equal(steps, ref_steps)


def test_unpatch_restores_the_model_bitwise(vl, cache):
    model, kind = vl[0], "image+video"
    inputs = inputs_of(vl, cache, kind)
    ref_logits = unpatched_reference(vl, cache, kind)[0]
    vtr.patch(model, "fastervlm", keep=KEEP)
    model(**inputs)
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    vtr.unpatch(model)
    assert not {"forward", "generate", "vtr"} & set(model.__dict__)
    assert not vtr_hooks(model)
    assert torch.equal(forward_logits(model, inputs), ref_logits)


# -- selection against eager attention --------------------------------------------------------------
@pytest.mark.parametrize("layer", [-2, -3])
def test_fastervlm_keeps_topk_of_eager_cls_attention_per_frame(vl, cache, layer):
    model, _ = vl
    inputs = inputs_of(vl, cache, "image+video")
    frames = inputs["pixel_values_videos"].flatten(0, 1)  # (2 videos * 8 frames, 3, 224, 224)
    frame_scores = eager_cls_attention(model.model.video_tower, frames, layer)
    image_scores = eager_cls_attention(model.model.image_tower, inputs["pixel_values"], layer)
    vtr.patch(model, "fastervlm", keep=KEEP)
    with torch.no_grad():
        model(**inputs, vision_feature_layer=layer)
    stats = model.vtr.stats
    image_kept, frame_kept = split_views(stats, inputs)
    assert len(frame_kept) == 16 and [v.sample for v in stats.views] == [0, 1] + [0] * 8 + [1] * 8
    assert all(torch.equal(kept, reference_topk(s, K)) for kept, s in zip(frame_kept, frame_scores))
    assert all(torch.equal(kept, reference_topk(s, K)) for kept, s in zip(image_kept, image_scores))
    assert stats.visual_tokens_in == [256 + 2056] * 2 and stats.visual_tokens_out == [K + 8 * (1 + K)] * 2
    for b, columns in enumerate(stats.kept_columns):  # every frame's [CLS] column survives
        video_columns = (inputs["input_ids"][b] == model.config.video_token_id).nonzero()[:, 0]
        assert set(video_columns[::PER_FRAME].tolist()) <= set(columns.tolist())


@pytest.mark.parametrize("kind,positions", [("image", "original"), ("video", "renumber"), ("image+video", "original")])
def test_patched_forward_equals_oracle_fed_kept_tokens(vl, cache, kind, positions):
    """Logits and loss equal the unpatched model given a hand-built prompt of only the kept tokens."""
    model, _ = vl
    inputs = inputs_of(vl, cache, kind)
    ids = inputs["input_ids"]
    labels = ids.masked_fill(torch.isin(ids, torch.tensor(placeholders(model))) | (inputs["attention_mask"] == 0), -100)
    vtr.patch(model, "fastervlm", keep=KEEP, positions=positions)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    image_kept, frame_kept = split_views(model.vtr.stats, inputs)
    vtr.unpatch(model)
    ref = oracle_forward(model, inputs, image_kept, frame_kept, positions, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-6)


def test_full_strategy_keeps_the_image_cls_feature():
    model, processor = tiny_model("video_llava", vision_feature_select_strategy="full")
    inputs = example_inputs(processor, "video_llava", "image", batch=2)
    assert (inputs["input_ids"][0] == model.config.image_token_id).sum() == 257
    scores = eager_cls_attention(model.model.image_tower, inputs["pixel_values"])
    vtr.patch(model, "fastervlm", keep=10)
    model(**inputs)
    assert model.vtr.stats.visual_tokens_out == [11, 11] and model.vtr.stats.visual_tokens_in == [257, 257]
    assert all(torch.equal(v.kept, reference_topk(s, 10)) for v, s in zip(model.vtr.stats.views, scores))


# -- batches, cache, dtypes -------------------------------------------------------------------------
@pytest.mark.parametrize("kind,reducer,positions", [("image", "fastervlm", "original"), ("video", "random", "renumber"),
                                                    ("image+video", "fastervlm", "original")])
def test_batch_equals_single(vl, cache, kind, reducer, positions):
    model, processor = vl
    inputs = inputs_of(vl, cache, kind)
    vtr.patch(model, reducer, keep=KEEP, positions=positions)
    seq, steps = generate_steps(model, inputs)
    batch_views = model.vtr.stats.views
    for b in range(2):
        single = example_inputs(processor, "video_llava", kind, batch=1, seed=1 + b)
        seq1, steps1 = generate_steps(model, single)
        row_views = [v for v in batch_views if v.sample == b]
        assert all(torch.equal(v1.kept, v.kept) for v1, v in zip(model.vtr.stats.views, row_views, strict=True))
        assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, inputs["input_ids"].shape[1]:])
        torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


def test_mixed_batch_image_row_and_video_row(vl):
    """Row 0 holds an image, row 1 a video: each row equals its own batch-1 run."""
    model, processor = vl
    rng = np.random.default_rng(7)
    image, frames = random_image(rng), random_frames(rng, n_frames=FRAMES)
    texts = ["USER: <image>\nwhat is in the image? ASSISTANT:", "USER: <video>\ndescribe the video ASSISTANT:"]
    kw = dict(return_tensors="pt", padding=True, return_legacy_image_output=False)
    batch = processor(text=texts, images=[image], videos=[frames], **kw)
    singles = [processor(text=texts[:1], images=[image], **kw), processor(text=texts[1:], videos=[frames], **kw)]
    vtr.patch(model, "fastervlm", keep=KEEP)
    seq, steps = generate_steps(model, batch)
    assert model.vtr.stats.visual_tokens_out == [K, 8 * (1 + K)]
    for b, single in enumerate(singles):
        seq1, steps1 = generate_steps(model, single)
        assert torch.equal(seq1[0, single["input_ids"].shape[1]:], seq[b, batch["input_ids"].shape[1]:])
        torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind,positions", [("image", "original"), ("video", "original"), ("image+video", "renumber")])
def test_cached_generate_equals_no_cache_recompute(vl, cache, kind, positions):
    model, _ = vl
    inputs = inputs_of(vl, cache, kind)
    n = 4
    vtr.patch(model, "fastervlm", keep=KEEP, positions=positions)
    seq, steps = generate_steps(model, inputs, n=n)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(seq[:, :prompt_len], inputs["input_ids"])  # the caller's prompt comes first
    full_mask = torch.cat([inputs["attention_mask"], torch.ones_like(seq[:, prompt_len:])], 1)
    recompute = {**inputs, "input_ids": seq[:, :-1], "attention_mask": full_mask[:, :-1]}
    if positions == "original":  # generate numbers from the mask; give the no-cache pass the same numbering
        recompute["position_ids"] = (full_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
    logits = forward_logits(model, recompute, use_cache=False)
    torch.testing.assert_close(logits[:, -n:], steps, rtol=0, atol=1e-5)


def test_bf16():
    model, processor = tiny_model("video_llava")
    model.to(torch.bfloat16)
    inputs = example_inputs(processor, "video_llava", "image+video", batch=1, seed=4)
    for key in ("pixel_values", "pixel_values_videos"):
        inputs[key] = inputs[key].to(torch.bfloat16)
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    vtr.patch(model, "fastervlm", keep=KEEP)
    seq = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=placeholders(model))
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 3
    _, frame_kept = split_views(model.vtr.stats, inputs)
    # bf16 eager attention rounds differently, so compare by score: every kept patch scores at least
    # the 26th-best reference score, up to bf16 rounding.
    scores = eager_cls_attention(model.model.video_tower, inputs["pixel_values_videos"].flatten(0, 1))
    for kept, s in zip(frame_kept, scores):
        threshold = s.topk(K).values[-1]
        assert (s[kept] >= threshold - 2e-2 * threshold.abs()).all()
    vtr.unpatch(model)
    assert torch.equal(forward_logits(model, inputs), ref)


# -- options, legacy inputs, errors -----------------------------------------------------------------
def test_legacy_pixel_values_images_key(vl, cache):
    model, processor = vl
    inputs = inputs_of(vl, cache, "image")
    legacy = {k: v for k, v in inputs.items() if k != "pixel_values"}
    legacy["pixel_values_images"] = inputs["pixel_values"]
    ref = unpatched_reference(vl, cache, "image")[0]
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, legacy), ref)
    vtr.patch(model, "fastervlm", keep=KEEP)
    assert torch.equal(generate_steps(model, legacy)[0], generate_steps(model, inputs)[0])
    with pytest.raises(ValueError, match="not both"):
        model(**inputs, pixel_values_images=inputs["pixel_values"])


def test_frame_cls_can_be_dropped(vl, cache):
    model, _ = vl
    inputs = inputs_of(vl, cache, "video")
    vtr.patch(model, "fastervlm", keep=KEEP)
    with torch.no_grad():
        with_cls = model(**inputs).logits
    kept_with_cls = [v.kept for v in model.vtr.stats.views]
    with pytest.raises(TypeError, match="keep_frame_cls"):
        model.vtr.adapter.keep_frame_cls = "no"
    model.vtr.adapter.keep_frame_cls = False
    with torch.no_grad():
        without = model(**inputs).logits
    stats = model.vtr.stats
    assert stats.visual_tokens_out == [8 * K] * 2 and without.shape[1] == with_cls.shape[1] - 8
    assert all(torch.equal(v.kept, k) for v, k in zip(stats.views, kept_with_cls))  # same patches, no [CLS]
    assert stats.adapted and "keep_frame_cls=False" in stats.notes[0]
    for b, columns in enumerate(stats.kept_columns):
        video_columns = (inputs["input_ids"][b] == model.config.video_token_id).nonzero()[:, 0]
        assert not set(video_columns[::PER_FRAME].tolist()) & set(columns.tolist())


def test_wrong_inputs_get_clear_errors(vl, cache):
    model, _ = vl
    inputs = inputs_of(vl, cache, "image+video")
    vtr.patch(model, "fastervlm", keep=KEEP)
    videos = inputs["pixel_values_videos"]
    cases = [
        ({**inputs, "pixel_values_videos": videos[0]},
         r"pixel_values_videos must be a \(n_videos, n_frames, 3, H, W\) tensor"),
        ({**inputs, "pixel_values_videos": videos[:1]}, "video placeholders per row but pixel_values_videos gives 1"),
        ({**inputs, "pixel_values": inputs["pixel_values"][:1]}, "image placeholders per row but pixel_values gives 1"),
        ({**inputs, "pixel_values": inputs["pixel_values"][0]}, r"pixel_values must be a \(n_images, 3, H, W\) tensor"),
        ({**inputs, "image_grid_thw": torch.ones(2, 3, dtype=torch.long)}, "'image_grid_thw' is not supported"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**bad)
        with pytest.raises(ValueError, match=message):
            model.generate(**bad, max_new_tokens=1)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    no_ids = {k: v for k, v in inputs.items() if k != "input_ids"}
    assert not vtr_hooks(model)  # no probe left behind by a failed call
    with torch.no_grad():  # inputs_embeds with visual inputs is reduced like input_ids (issue 12)
        by_embeds, by_ids = model(inputs_embeds=embeds, **no_ids).logits, model(**inputs).logits
    assert by_embeds.shape == by_ids.shape and torch.allclose(by_embeds, by_ids, atol=1e-5)
