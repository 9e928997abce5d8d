"""Tiny LLaVA-1.5: CLIP 336 px / patch 14 (576 visual tokens + [CLS]) and a 4-layer Llama."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.media.images import CLIP_MEAN, CLIP_STD
from vtr.testing.media import chat_prompt, random_image, row_prompt
from vtr.testing.configs import tiny_clip_settings, tiny_text_settings
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image",)


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = build_tokenizer()
    vision = tiny_clip_settings(336, overrides)
    text = tiny_text_settings(tok, overrides)
    grid = vision["image_size"] // vision["patch_size"]
    settings = dict(image_token_id=tok.image_token_id, vision_feature_layer=-2,
                    vision_feature_select_strategy="default", image_seq_length=grid * grid,
                    projector_hidden_act="gelu")
    settings.update(overrides)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text), **settings)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    size = vision["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=vision["patch_size"],
                               vision_feature_select_strategy=settings["vision_feature_select_strategy"],
                               num_additional_image_tokens=1)
    return model, processor


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed (image and prompt drawn from that seed), left-padded."""
    images = [random_image(np.random.default_rng(s)) for s in seeds]
    texts = [chat_prompt(row_prompt(s)) for s in seeds]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)
