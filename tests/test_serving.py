"""vtr.serving: the exported embeddings and prompts against the HF oracle.

The oracle is the unpatched HF model fed the exported rows the way an embeddings engine feeds
them: token embeddings with the rows scattered into the placeholder slots, positions numbered
contiguously (``inputs_embeds``, no ``position_ids``). It must give the same greedy tokens as the
patched model with ``positions="renumber"``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vtr
import vtr.serving as serving
from vtr.testing import chat_prompt, example_inputs, random_image, tiny_model


SIDE = 112  # 8×8 = 64 patches: the contracts hold at any grid, and the suite stays fast
N_PATCHES = (SIDE // 14) ** 2


@pytest.fixture(scope="module")
def llava():
    return tiny_model("llava", vision={"image_size": SIDE})


def oracle_generate(model, prompt: serving.ReducedPrompt, max_new_tokens: int) -> list[int]:
    """Greedy tokens of the unpatched model fed ``prompt`` as inputs_embeds with contiguous positions."""
    ids = torch.tensor([prompt.prompt_token_ids])
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        rows = torch.cat(prompt.image_embeds).to(embeds.dtype)
        slots = (ids == prompt.placeholder_id)[..., None]
        assert int(slots.sum()) == rows.shape[0]
        embeds = embeds.masked_scatter(slots, rows)
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=None)
    return out[0].tolist()  # inputs_embeds only: generate returns the new tokens alone


def two_image_inputs(processor, seed: int = 3):
    rng = np.random.default_rng(seed)
    text = chat_prompt("compare <image> with the first").replace("<image>", "<image><image>", 1).replace(
        "compare <image>", "compare the two")
    return processor(images=[random_image(rng), random_image(rng)], text=[text], return_tensors="pt")


@pytest.mark.parametrize("keep", [0.1, 20])
def test_llava_export_shapes_counts_and_prompt(llava, keep):
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=3)  # left-padded rows of different lengths
    with vtr.patched(model, "fastervlm", keep=keep, positions="renumber"):
        prompts = serving.export(model, inputs)
        stats = model.vtr.stats
    hidden, token_id = model.config.text_config.hidden_size, model.config.image_token_id
    assert len(prompts) == 3
    for b, p in enumerate(prompts):
        n_keep = 6 if keep == 0.1 else 20  # 64 patches × 0.1, rounded half up
        assert p.rows == (n_keep,) and sum(p.rows) == stats.visual_tokens_out[b] and p.visual_tokens_in == N_PATCHES
        assert p.image_embeds[0].shape == (n_keep, hidden) and p.image_embeds[0].dtype == torch.float32
        assert p.image_embeds[0].device.type == "cpu"
        ids = torch.tensor(p.prompt_token_ids)
        original = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
        assert ids.eq(token_id).sum() == n_keep and p.placeholder_id == token_id
        # the text is untouched: the same non-placeholder ids in the same order, no padding
        assert ids[ids != token_id].tolist() == original[original != token_id].tolist()
        placeholders = (ids == token_id).nonzero().squeeze(1)
        assert (placeholders.diff() == 1).all()  # one contiguous run, where the image was
        collapsed = p.single_placeholder_ids()
        assert collapsed.count(token_id) == 1 and len(collapsed) == len(p.prompt_token_ids) - n_keep + 1
    assert serving.group_by_rows(prompts) == [[0, 1, 2]]
    # the exported rows are the patched model's own kept features: the unpatched model's projected
    # features at the patches the plan kept
    with torch.no_grad():
        full = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    for p, view, f in zip(prompts, stats.views, full):
        torch.testing.assert_close(p.image_embeds[0], f[view.kept], rtol=0, atol=0)


def test_greedy_output_equals_patched_model_with_renumbered_positions(llava):
    model, processor = llava
    for seed in (0,):
        inputs = example_inputs(processor, "llava", batch=1, seed=seed)
        with vtr.patched(model, "fastervlm", keep=0.1, positions="renumber"):
            (prompt,) = serving.export(model, inputs)
            patched_out = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None)
        new = patched_out[0, inputs["input_ids"].shape[1]:].tolist()
        assert oracle_generate(model, prompt, 8) == new
        # and the logits of the reduced prompt agree with the patched forward
        with vtr.patched(model, "fastervlm", keep=0.1, positions="renumber"), torch.no_grad():
            patched_logits = model(**inputs).logits[0]
            ids = torch.tensor([prompt.prompt_token_ids])
            mm = {"image": type(model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True))(
                pooler_output=prompt.image_embeds)}
        with torch.no_grad():
            oracle_logits = model(input_ids=ids, mm_encoder_outputs=mm).logits[0]
        torch.testing.assert_close(oracle_logits, patched_logits, rtol=1e-5, atol=1e-5)


def test_original_positions_differ_from_what_an_engine_computes(llava):
    """Why the docs say renumber: with positions="original" the patched model's output is not what an
    engine fed the same rows computes (the text after the image keeps its unreduced place)."""
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=1)
    with vtr.patched(model, "fastervlm", keep=0.1), torch.no_grad():
        (prompt,) = serving.export(model, inputs)
        original = model(**inputs).logits[0, -1]
    with vtr.patched(model, "fastervlm", keep=0.1, positions="renumber"), torch.no_grad():
        (renumbered_prompt,) = serving.export(model, inputs)
        renumbered = model(**inputs).logits[0, -1]
    torch.testing.assert_close(renumbered_prompt.image_embeds[0], prompt.image_embeds[0], rtol=0, atol=0)
    assert not torch.allclose(original, renumbered, atol=1e-4)


def test_two_images_in_one_prompt(llava):
    model, processor = llava
    inputs = two_image_inputs(processor)
    with vtr.patched(model, "fastervlm", keep=12, positions="renumber"):
        (prompt,) = serving.export(model, inputs)
        assert model.vtr.stats.visual_tokens_out == [24]
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert prompt.rows == (12, 12)
    assert prompt.single_placeholder_ids().count(prompt.placeholder_id) == 2
    offline = serving.offline_prompt(prompt)
    assert offline["multi_modal_data"]["image"].shape == (2, 12, model.config.text_config.hidden_size)
    assert offline["prompt_token_ids"] == prompt.single_placeholder_ids()  # vLLM expands each to its rows
    assert oracle_generate(model, prompt, 6) == out[0, inputs["input_ids"].shape[1]:].tolist()


def test_llava_next_views_counts_and_grouping():
    model, processor = tiny_model("llava_next")
    inputs = example_inputs(processor, "llava_next", batch=3)  # images of different sizes and crop layouts
    with vtr.patched(model, "fastervlm", keep=0.25, positions="renumber"):
        prompts = serving.export(model, inputs)
        stats = model.vtr.stats
        outs = [model.generate(**example_inputs(processor, "llava_next", batch=1, seed=b), max_new_tokens=5,
                               do_sample=False, eos_token_id=None) for b in range(3)]
    for b, p in enumerate(prompts):
        assert len(p.rows) == 1 and sum(p.rows) == stats.visual_tokens_out[b]
        assert p.prompt_token_ids.count(p.placeholder_id) == p.rows[0]
        prompt_len = example_inputs(processor, "llava_next", batch=1, seed=b)["input_ids"].shape[1]
        assert oracle_generate(model, p, 5) == outs[b][0, prompt_len:].tolist()
    groups = serving.group_by_rows(prompts)
    assert sorted(i for g in groups for i in g) == [0, 1, 2]
    for g in groups:
        assert len({prompts[i].rows for i in g}) == 1
    assert len(groups) == len({p.rows for p in prompts})


def test_bf16_export_keeps_the_model_dtype(llava):
    model, processor = tiny_model("llava", seed=1, vision={"image_size": SIDE})
    model = model.to(torch.bfloat16)
    inputs = example_inputs(processor, "llava", batch=1)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    (prompt,) = serving.export(model, inputs, "pool", keep=16)
    assert prompt.image_embeds[0].dtype == torch.bfloat16 and prompt.rows == (16,)
    assert serving.offline_prompt(prompt, dtype=torch.float32)["multi_modal_data"]["image"].dtype == torch.float32


def test_export_with_reducer_argument_leaves_the_model_unpatched(llava):
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=1)
    (prompt,) = serving.export(model, inputs, "fastervlm", keep=0.1, positions="renumber")
    assert not vtr.is_patched(model) and prompt.rows == (6,)
    with vtr.patched(model, "fastervlm", keep=0.1, positions="renumber"):
        (again,) = serving.export(model, inputs)
    assert again.prompt_token_ids == prompt.prompt_token_ids
    torch.testing.assert_close(again.image_embeds[0], prompt.image_embeds[0], rtol=0, atol=0)


def test_mixed_row_counts_are_never_grouped():
    def prompt(*rows):
        return serving.ReducedPrompt([0], [torch.zeros(n, 4) for n in rows], 0)
    prompts = [prompt(5), prompt(7), prompt(5), prompt(5, 7), prompt(7, 7)]
    assert serving.group_by_rows(prompts) == [[0, 2], [1, 4], [3]]
    assert isinstance(serving.image_embeds(prompts[3]), list)
    assert serving.image_embeds(prompts[4]).shape == (2, 7, 4)


def test_openai_content_and_base64_round_trip(llava):
    model, processor = llava
    inputs = two_image_inputs(processor)
    (prompt,) = serving.export(model, inputs, "random", keep=9)
    content = serving.openai_content(prompt, "what is this?")
    assert [c["type"] for c in content] == ["image_embeds", "image_embeds", "text"] and content[-1]["text"] == "what is this?"
    for part, rows in zip(content, prompt.image_embeds):
        decoded = serving.tensor_from_base64(part["image_embeds"])
        assert decoded.dtype == rows.dtype and torch.equal(decoded, rows)
    half = serving.tensor_from_base64(serving.openai_content(prompt, "x", dtype=torch.float16)[0]["image_embeds"])
    assert half.dtype == torch.float16 and half.shape == prompt.image_embeds[0].shape


def reduced_count(keep, inputs, model):
    """``keep_count`` of the prompt's placeholders (one image)."""
    from vtr.ops.selection import keep_count

    return keep_count(keep, int((inputs["input_ids"][0] == model.config.image_token_id).sum()))


def test_refusals_name_the_reason(llava):
    model, processor = llava
    inputs = example_inputs(processor, "llava", batch=1)
    with pytest.raises(ValueError, match="not patched"):
        serving.export(model, inputs)
    with pytest.raises(ValueError, match="only inside the LLM"):
        serving.export(model, inputs, "fastv", keep=0.5)
    with pytest.raises(ValueError, match="also inside the LLM"):
        serving.export(model, inputs, "aim", keep=0.5)
    with pytest.raises(ValueError, match="need reducer"):
        serving.export(model, inputs, keep=0.5)
    with pytest.raises(ValueError, match="proportional attention.*proportional=False"):
        serving.export(model, inputs, "divrelay", keep=0.1)
    (merged,) = serving.export(model, inputs, "divrelay", keep=0.1, proportional=False)  # plain merged rows export
    assert sum(merged.rows) == reduced_count(0.1, inputs, model)
    with vtr.patched(model, "fastervlm", keep=0.1):
        with pytest.raises(ValueError, match="already patched"):
            serving.export(model, inputs, "random")
        with pytest.raises(ValueError, match="pixel_values"):
            serving.export(model, {"input_ids": inputs["input_ids"]})
    assert not vtr.is_patched(model)
    qwen, qwen_processor = tiny_model("qwen2_vl")
    with pytest.raises(ValueError, match="image_grid_thw.*recompute|M-RoPE"):
        serving.export(qwen, example_inputs(qwen_processor, "qwen2_vl", batch=1), "fastervlm", keep=0.5)
    assert not vtr.is_patched(qwen)
