"""Tiny Gemma 3: a SigLIP tower at 224 px / patch 14 (16×16 patches, no [CLS]) average-pooled 2×2 into 8×8 = 64
tokens per image (the real model pools 64×64 patches 4×4 into 256), and a 4-layer Gemma 3 LLM whose sliding
layers (64-token window) and full layer alternate as in the real model, with bidirectional attention over each
image's tokens (``token_type_ids``).

The processor is transformers' own ``Gemma3Processor``: each ``<start_of_image>`` in a prompt becomes
``\\n\\n<start_of_image>`` + 64 ``<image_soft_token>`` + ``<end_of_image>\\n\\n``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.testing.configs import tiny_text_settings
from vtr.testing.media import random_image, row_prompt
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image",)
IMAGE_TOKEN, BOI, EOI = "<image_soft_token>", "<start_of_image>", "<end_of_image>"
SIZE, PATCH, TOKENS = 224, 14, 64


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)

    tok = build_tokenizer(image_token=IMAGE_TOKEN, named={"boi_token": BOI, "eoi_token": EOI})
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  image_size=SIZE, patch_size=PATCH, vision_use_head=False)
    vision.update(overrides.pop("vision", {}))
    text = tiny_text_settings(tok, overrides, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                              layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                                           "full_attention"])
    boi, eoi = tok.convert_tokens_to_ids([BOI, EOI])
    settings = dict(mm_tokens_per_image=TOKENS, image_token_index=tok.image_token_id, boi_token_index=boi,
                    eoi_token_index=eoi)
    settings.update(overrides)
    config = Gemma3Config(vision_config=SiglipVisionConfig(**vision), text_config=Gemma3TextConfig(**text), **settings)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    image_processor = Gemma3ImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=(0.5,) * 3,
                                           image_std=(0.5,) * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=TOKENS)
    return model, processor


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed (image and prompt from that seed alone), left-padded."""
    images = [[random_image(np.random.default_rng(s))] for s in seeds]
    texts = [f"USER: {BOI}{row_prompt(s)} ASSISTANT:" for s in seeds]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)
