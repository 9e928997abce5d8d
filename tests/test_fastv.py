"""The in-LLM engine through FastV, on LLaVA-1.5: references are eager attention, no-cache
recomputes and batch-1 runs."""
import copy

import numpy as np
import pytest
import torch

import vtr
from helpers import generate_output
from reference import manual_pruned_logits
from vtr.testing import chat_prompt, example_inputs, random_image

IMPLS = ["sdpa", "eager"]


def generate_output_and_steps(model, inputs, n=4):
    out = generate_output(model, inputs, n)
    return out, torch.stack(out.logits, dim=1)




def ragged_inputs(processor, seed=0):
    """Row 0 holds two images, row 1 one image: FastV keeps different counts per row."""
    rng = np.random.default_rng(seed)
    texts = [chat_prompt("compare <image> with this", "<image>"), chat_prompt("what is in the image?")]
    processor.tokenizer.padding_side = "left"
    return processor(images=[random_image(rng) for _ in range(3)], text=texts, return_tensors="pt", padding=True)


def eager_last_token_topk(model, inputs, layer, keep):
    """Reference: layer-1's eager attention of each row's last token over its visual tokens, top-k."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        out = reference(**inputs, output_attentions=True)
    attention = out.attentions[layer - 1][:, :, -1].mean(1)  # (B, N): last column is the last token
    picks = []
    for b in range(attention.shape[0]):
        visual = (inputs["input_ids"][b] == model.config.image_token_id).nonzero().squeeze(1)
        k = int(np.floor(keep * len(visual) + 0.5))
        picks.append(visual[torch.topk(attention[b, visual], k).indices].sort().values)
    return picks


def kept_visual_columns(model, inputs, b):
    cols = model.vtr.stats.kept_columns[b]
    cols = cols[cols >= 0]
    return cols[inputs["input_ids"][b, cols] == model.config.image_token_id]


@pytest.mark.parametrize("impl", IMPLS)
def test_keep_one_is_identity(llava, inputs2, impl):
    model, _ = llava
    model.set_attn_implementation(impl)
    with torch.no_grad():
        ref = model(**inputs2).logits
    ref_out, ref_steps = generate_output_and_steps(model, inputs2)
    with vtr.patched(model, "fastv", keep=1.0):
        with torch.no_grad():
            assert torch.equal(model(**inputs2).logits, ref)
        out, steps = generate_output_and_steps(model, inputs2)
        assert torch.equal(out.sequences, ref_out.sequences) and torch.equal(steps, ref_steps)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_kept_set_equals_eager_reference(llava, inputs2, impl, layer):
    model, _ = llava
    model.set_attn_implementation(impl)
    expected = eager_last_token_topk(model, inputs2, layer, 0.25)
    vtr.patch(model, "fastv", keep=0.25, layer=layer)
    with torch.no_grad():
        model(**inputs2)
    for b in range(2):
        assert torch.equal(kept_visual_columns(model, inputs2, b), expected[b])
    assert model.vtr.stats.stages[f"llm_layer_{layer}"] == {"in": [576, 576], "out": [144, 144]}


@pytest.mark.parametrize("impl", IMPLS)
def test_prefill_equals_manual_layer_loop(llava, impl):
    """The pruned forward equals a hook-free loop over the layers that drops the same columns."""
    model, processor = llava
    model.set_attn_implementation(impl)
    inputs = example_inputs(processor, "llava", batch=1, seed=4)
    vtr.patch(model, "fastv", keep=0.25, layer=2)
    with torch.no_grad():
        logits = model(**inputs).logits
    kept = model.vtr.stats.kept_columns[0]
    vtr.unpatch(model)
    torch.testing.assert_close(logits, manual_pruned_logits(model, inputs, kept, layer=2), rtol=0, atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_cached_generate_equals_no_cache_recompute(llava, impl):
    """Cached decoding after pruning equals recomputing the whole kept sequence at every step."""
    model, processor = llava
    model.set_attn_implementation(impl)
    inputs = example_inputs(processor, "llava", batch=1, seed=5)
    vtr.patch(model, "fastv", keep=0.25, layer=2)
    out, steps = generate_output_and_steps(model, inputs, n=5)
    prompt = inputs["input_ids"].shape[1]
    kept_prompt = model.vtr.stats.kept_columns[0]
    vtr.unpatch(model)
    for t in range(5):  # step t predicts from the prompt plus t generated tokens, with no cache
        kept = torch.cat([kept_prompt, torch.arange(prompt, prompt + t)])
        step_inputs = {**inputs, "input_ids": out.sequences[:, :prompt + t]}
        expected = manual_pruned_logits(model, step_inputs, kept, layer=2)[:, -1]
        torch.testing.assert_close(steps[:, t], expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ragged", [False, True])
def test_batch_equals_single(llava, impl, ragged):
    model, processor = llava
    model.set_attn_implementation(impl)
    inputs = ragged_inputs(processor) if ragged else example_inputs(processor, "llava", batch=2, seed=6)
    images_per_row = (inputs["input_ids"] == model.config.image_token_id).sum(1) // 576
    vtr.patch(model, "fastv", keep=0.25)
    out, steps = generate_output_and_steps(model, inputs)
    kept = [kept_visual_columns(model, inputs, b) for b in range(2)]
    assert model.vtr.stats.visual_tokens_out == [144 * int(n) for n in images_per_row]
    first_image = 0
    for b in range(2):
        row = inputs["attention_mask"][b].bool()
        n_images = int(images_per_row[b])
        single = {"input_ids": inputs["input_ids"][b:b + 1, row], "attention_mask": inputs["attention_mask"][b:b + 1, row],
                  "pixel_values": inputs["pixel_values"][first_image:first_image + n_images]}
        first_image += n_images
        out1, steps1 = generate_output_and_steps(model, single)
        shift = int((~row).sum())  # left padding of row b in the batch
        assert torch.equal(kept_visual_columns(model, single, 0) + shift, kept[b])
        assert torch.equal(out1.sequences[0, single["input_ids"].shape[1]:], out.sequences[b, inputs["input_ids"].shape[1]:])
        torch.testing.assert_close(steps1[0], steps[b], rtol=0, atol=2e-5)


def test_kv_cache_holds_only_kept_tokens(llava, inputs2):
    model, _ = llava
    vtr.patch(model, "fastv", keep=0.25, layer=2)
    out, _ = generate_output_and_steps(model, inputs2, n=3)
    cache = out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache
    n = inputs2["input_ids"].shape[1]
    lengths = [cache.get_seq_length(i) for i in range(4)]
    # 3 new tokens: the last one is produced but not fed back, so 2 decode steps reach the cache
    assert lengths == [n + 2, n + 2, n - 432 + 2, n - 432 + 2]


def test_loss_covers_text_tokens_of_the_kept_rows(llava, inputs2):
    model, _ = llava
    labels = inputs2["input_ids"].masked_fill(inputs2["input_ids"] == model.config.image_token_id, -100)
    labels = labels.masked_fill(inputs2["attention_mask"] == 0, -100)
    vtr.patch(model, "fastv", keep=0.25)
    with torch.no_grad():
        out = model(**inputs2, labels=labels)
    cols = torch.stack(model.vtr.stats.kept_columns)  # caller columns behind each logits row (-1: filler)
    # each kept row is scored on the caller token that follows its own column, as it is unpruned (issue 12)
    next_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    expected_labels = next_labels.gather(1, cols.clamp(min=0)).masked_fill(cols < 0, -100)
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), expected_labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    # only text tokens carry labels, and every text token survived
    kept_labels = labels.gather(1, cols.clamp(min=0)).masked_fill(cols < 0, -100)
    assert int((kept_labels != -100).sum()) == int((labels != -100).sum())


def test_bad_layer_is_rejected(llava, inputs2):
    model, _ = llava
    with pytest.raises(ValueError, match="layer"):
        vtr.patch(model, "fastv", layer=0)
    # checked against the model's depth at patch time (issue 18), before anything changes
    with pytest.raises(ValueError, match=r"layer=4 is out of range for a LLM of 4 layers; allowed: 1\.\.3"):
        vtr.patch(model, "fastv", layer=4)
    assert not vtr.is_patched(model)


def test_bf16(llava, inputs2):
    model, _ = llava
    model.to(torch.bfloat16)
    inputs = {**inputs2, "pixel_values": inputs2["pixel_values"].to(torch.bfloat16)}
    with torch.no_grad():
        ref = model(**inputs).logits
    with vtr.patched(model, "fastv", keep=1.0):
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, ref)
    vtr.patch(model, "fastv", keep=0.25)
    out, _ = generate_output_and_steps(model, inputs, n=3)
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + 3
    assert model.vtr.stats.visual_tokens_out == [144, 144]
