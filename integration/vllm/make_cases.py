"""Cases for the vLLM integration test, built in vtr's own environment (vLLM cannot live there).

For the shipped tiny LLaVA (``vtr.shapes.CHECKPOINT``) and held-out shape scenes, each case exports the
reduced embeddings with :func:`vtr.serving.export` and records the HF oracle: the unpatched model fed
those rows as ``inputs_embeds`` with contiguous positions, greedy, ``MAX_NEW`` tokens (end of sequence
not special, so every token is compared). The oracle is checked here against the patched model with
``positions="renumber"``, so the file holds outputs two independent HF paths agree on.

    .venv/bin/python integration/vllm/make_cases.py build/vllm/cases.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import vtr
import vtr.serving as serving
from vtr.shapes import CHECKPOINT, render_pil, test_set
from vtr.testing import chat_prompt

MAX_NEW = 4
N_PROMPTS = 6
#: case name -> (reducer, settings, images per prompt)
CASES = {
    "fastervlm_keep36": ("fastervlm", {"keep": 36}, 1),
    "fastervlm_keep0.1": ("fastervlm", {"keep": 0.1}, 1),
    "pool_keep16": ("pool", {"keep": 16}, 1),
    "unreduced": ("fastervlm", {"keep": 1.0}, 1),
    "two_images_keep20": ("fastervlm", {"keep": 20}, 2),
}


def load():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(CHECKPOINT).eval()
    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    processor.tokenizer.padding_side = "left"
    return model, processor


def shapes_inputs(processor, start: int, n: int, images_per_prompt: int = 1):
    """Processor outputs for ``n`` held-out questions; with 2 images, the next scene comes first."""
    items = test_set()[start:start + n + images_per_prompt]
    images, texts = [], []
    for i in range(n):
        scenes = [render_pil(items[i + j].scene) for j in range(images_per_prompt)]
        images += scenes[::-1]
        texts.append(chat_prompt(items[i].question, processor.image_token * images_per_prompt))
    return processor(images=images, text=texts, return_tensors="pt", padding=True), [items[i] for i in range(n)]


def oracle_tokens(model, prompt: serving.ReducedPrompt, max_new: int) -> list[int]:
    """Greedy tokens of the unpatched model on the exported rows, positions 0..n-1 (what an engine does).

    A plain loop with a full recompute per step (no cache, end of sequence not special): obviously the
    greedy continuation, whatever ``generate``'s stopping rules.
    """
    ids = torch.tensor([prompt.prompt_token_ids])
    tokens: list[int] = []
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == prompt.placeholder_id)[..., None], torch.cat(prompt.image_embeds))
        for _ in range(max_new):
            logits = model(inputs_embeds=embeds).logits[0, -1]
            tokens.append(int(logits.argmax()))
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[tokens[-1]]]))], dim=1)
    return tokens


def patched_tokens(model, inputs, row: int, max_new: int) -> list[int]:
    """The same greedy loop on the patched model (positions="renumber"), from the raw row and its pixels."""
    mask = inputs["attention_mask"][row].bool()
    ids = inputs["input_ids"][row][mask][None]
    n_images = int((ids == model.config.image_token_id).sum()) // model.config.image_seq_length
    first = int((inputs["input_ids"][:row] == model.config.image_token_id).sum()) // model.config.image_seq_length
    pixels = inputs["pixel_values"][first:first + n_images]
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=ids, pixel_values=pixels).logits[0, -1]
            tokens.append(int(logits.argmax()))
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens


def build(model, processor) -> dict:
    cases = {}
    for index, (name, (reducer, settings, n_images)) in enumerate(CASES.items()):
        inputs, items = shapes_inputs(processor, 40 * index, N_PROMPTS, n_images)
        with vtr.patched(model, reducer, positions="renumber", **settings):
            prompts = serving.export(model, inputs)
            stats = model.vtr.stats
            patched = [patched_tokens(model, inputs, b, MAX_NEW) for b in range(len(prompts))]
        expected = [oracle_tokens(model, p, MAX_NEW) for p in prompts]
        for b, tokens in enumerate(expected):  # two HF paths agree before vLLM is asked
            if patched[b] != tokens:
                raise SystemExit(f"{name} row {b}: oracle {tokens} != patched model {patched[b]}")
        cases[name] = {
            "prompt_token_ids": [p.prompt_token_ids for p in prompts],  # expanded: what the LLM sees
            "image_embeds": [p.image_embeds for p in prompts],
            "placeholder_id": prompts[0].placeholder_id,
            "questions": [i.question for i in items],
            "rows": [p.rows for p in prompts],
            "visual_tokens_out": list(stats.visual_tokens_out),
            "expected": expected,
        }
        print(f"{name}: rows {prompts[0].rows}, {len(prompts[0].prompt_token_ids)} prompt tokens, oracle {expected[0]}")
    return {"checkpoint": str(CHECKPOINT), "max_new": MAX_NEW, "cases": cases,
            "versions": {"torch": torch.__version__, "vtr": vtr.__version__}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, processor = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build(model, processor), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
