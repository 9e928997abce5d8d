"""Tiny LLaVA-NeXT (AnyRes, stock ``spatial_unpad`` packing): CLIP 56 px / patch 14 and a 4-layer Llama.

The geometry is LLaVA-NeXT's at 1/6 scale: a 56 px base view gives a 4×4 patch grid (24×24 at
336 px), and the AnyRes pinpoints ``[[56, 112], [112, 56], [112, 112]]`` give 1×2, 2×1 or 2×2
crops besides the base view. The processor is transformers' own ``LlavaNextProcessor``, so the
placeholder counts are the ones users get.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.media.images import CLIP_MEAN, CLIP_STD
from vtr.testing.media import chat_prompt, random_image, row_prompt
from vtr.testing.configs import tiny_clip_settings, tiny_text_settings
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image",)
BASE_SIZE = 56


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    tok = build_tokenizer()
    vision = tiny_clip_settings(BASE_SIZE, overrides)
    text = tiny_text_settings(tok, overrides)
    s, grid = vision["image_size"], vision["image_size"] // vision["patch_size"]
    settings = dict(image_token_id=tok.image_token_id, image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
                    vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=grid * grid,
                    projector_hidden_act="gelu")
    settings.update(overrides)
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text), **settings)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s},
        image_grid_pinpoints=settings["image_grid_pinpoints"], image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=vision["patch_size"],
                                   vision_feature_select_strategy=settings["vision_feature_select_strategy"],
                                   num_additional_image_tokens=1)
    return model, processor


def image_shape(seed: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(height, width)`` of a row's image: wide, tall or moderately oblong by ``seed % 3``.

    Wide (aspect 3.4-4.5) and tall images pick the 1×2 and 2×1 pinpoints (3 views), oblong ones
    (aspect 1.35-1.8) mostly the 2×2 pinpoint (5 views; small ones tie and take a 2-crop one). The
    aspect ranges are far enough from the pinpoints' that unpadding drops whole patch rows or
    columns of the crops, and consecutive seeds give rows of different packed lengths.
    """
    short = int(rng.integers(40, 90))
    if seed % 3 == 2:
        long = int(short * rng.uniform(1.35, 1.8))
        return (short, long) if rng.integers(2) else (long, short)
    long = int(short * rng.uniform(3.4, 4.5))
    return (short, long) if seed % 3 == 0 else (long, short)


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed (image and prompt drawn from that seed), left-padded.

    ``pixel_values``: ``(B, max_views, 3, 56, 56)``, padded with zero views where a row has fewer;
    ``image_sizes``: ``(B, 2)`` original ``(height, width)``.
    """
    images = []
    for s in seeds:
        rng = np.random.default_rng(s)
        height, width = image_shape(s, rng)
        images.append(random_image(rng, 120, 240).resize((width, height)))
    texts = [chat_prompt(row_prompt(s)) for s in seeds]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)
