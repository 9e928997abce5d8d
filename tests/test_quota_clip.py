"""QuoTA's ``scorer="clip"`` with a real ``open_clip`` model (the ``vtr[clip]`` extra): a random-weight ViT-B-32
built offline scores each frame as the clamped cosine of its embeddings; frames that all score 0 share the
budget uniformly, and the stats say so."""
import numpy as np
import pytest
import torch

import vtr
from vtr.reducers.quota import assignments
from vtr.reducers.quota.reducer import ZERO_SCORES_NOTE
from vtr.reducers.quota.scorers import ClipScorer
from vtr.testing import example_inputs, tiny_model

open_clip = pytest.importorskip("open_clip", reason="the vtr[clip] extra (open_clip_torch) is not installed")


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32")


def test_open_clip_scores_are_clamped_cosines(clip):
    model, preprocess, tokenizer = clip
    from PIL import Image

    frames = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    scores = ClipScorer(model, preprocess, tokenizer)(frames, ["a dog", "a red car"])
    with torch.no_grad():  # the reference: open_clip's own API, written out
        image = model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))
        text = model.encode_text(tokenizer(["a dog", "a red car"]))
        cos = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    torch.testing.assert_close(scores, cos.max(dim=-1).values.clamp(min=0), rtol=0, atol=1e-5)


def test_quota_with_a_real_open_clip_model(clip):
    model, preprocess, tokenizer = clip
    vlm, processor = tiny_model("video_llava")
    inputs = example_inputs(processor, "video_llava", "video", batch=1, seed=0)
    with vtr.patched(vlm, "quota", keep=0.25, scorer="clip", clip_model=model, clip_preprocess=preprocess,
                     clip_tokenizer=tokenizer, question="what happens?"):
        with torch.no_grad():
            vlm(**inputs)
        (record,) = assignments(vlm)
        stats = vlm.vtr.stats
    scores = torch.as_tensor(record.scores)
    assert scores.shape == (8,) and bool((scores >= 0).all())
    assert sum(record.counts) == record.budget
    if not bool((scores > 0).any()):  # random weights: every cosine clamped to 0
        assert ZERO_SCORES_NOTE in stats.notes
        assert max(record.counts) - min(record.counts) <= 1  # uniform
    else:
        assert ZERO_SCORES_NOTE not in stats.notes


def test_all_zero_scores_fall_back_to_uniform_with_a_note():
    vlm, processor = tiny_model("video_llava")
    inputs = example_inputs(processor, "video_llava", "video", batch=1, seed=0)
    with vtr.patched(vlm, "quota", keep=0.25, scorer=lambda frames, query: np.zeros(len(frames)), question="q"):
        with torch.no_grad():
            vlm(**inputs)
        (record,) = assignments(vlm)
        assert ZERO_SCORES_NOTE in vlm.vtr.stats.notes
    weights = torch.as_tensor(record.weights)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 8))
    assert max(record.counts) - min(record.counts) <= 1
