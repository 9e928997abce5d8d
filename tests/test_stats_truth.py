"""Stats tell the truth: after rows shrink by different amounts the reduced batch is only as wide as its longest
row (so the FLOPs reported are those of what ran), and text-only calls report the same shape of stats for every
reducer."""
import numpy as np
import pytest
import torch

import vtr
from vtr.ops.flops import prefill_flops
from vtr.testing import chat_prompt, random_image, tiny_model

REDUCERS = ["fastervlm", "random", "pool", "fopru", "fastv", "atp", "aim"]


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny_model("llava")
    processor.tokenizer.padding_side = "left"
    return model, processor


def mixed_batch(processor):
    """Row 0: an image and a question; row 1: a longer text-only prompt (no image)."""
    return processor(images=[random_image(np.random.default_rng(0))], text=[chat_prompt("what is it?"),
                     "USER: tell me a long story about a small boat on a wide and quiet lake ASSISTANT:"],
                     return_tensors="pt", padding=True)


def test_mixed_batch_is_only_as_wide_as_its_longest_reduced_row(llava):
    model, processor = llava
    inputs = mixed_batch(processor)
    real = inputs["attention_mask"].sum(dim=1).tolist()
    text_only = {k: v[1:] for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    text_only = {k: v[:, -real[1]:] for k, v in text_only.items()}  # row 1 alone, without its padding
    with torch.no_grad():
        alone = model(**text_only).logits[0]
    with vtr.patched(model, "fastervlm", keep=0.1):
        with torch.no_grad():
            logits = model(**inputs).logits
        stats = model.vtr.stats
    reduced = [real[0] - 576 + 58, real[1]]
    assert logits.shape[1] == max(reduced) < inputs["input_ids"].shape[1]  # no column of padding kept
    assert [int((c >= 0).sum()) for c in stats.kept_columns] == reduced
    torch.testing.assert_close(logits[1, -real[1]:], alone, rtol=0, atol=2e-5)  # the text row is unchanged
    text_config = model.config.get_text_config()
    layers = text_config.num_hidden_layers
    assert stats.prefill_flops_after == pytest.approx(sum(prefill_flops(text_config, [n] * layers) for n in reduced))
    assert stats.visual_tokens_in == [576, 0] and stats.visual_tokens_out == [58, 0]


@pytest.mark.parametrize("reducer", REDUCERS)
def test_text_only_calls_report_the_same_stats_shape(llava, reducer):
    model, processor = llava
    inputs = processor(text=["USER: hi there ASSISTANT:", "USER: a longer text only prompt ASSISTANT:"],
                       return_tensors="pt", padding=True)
    layers = model.config.get_text_config().num_hidden_layers
    with vtr.patched(model, reducer):
        with torch.no_grad():
            model(**inputs)
        stats = model.vtr.stats
    assert stats.visual_tokens_in == [0, 0] and stats.visual_tokens_out == [0, 0]
    assert stats.visual_tokens_per_layer == [[0] * layers] * 2
    assert stats.flops_ratio == 1.0 and stats.prefill_flops_before > 0
    assert len(stats.kept_columns) == 2 and stats.layer_share == [1.0, 1.0]
