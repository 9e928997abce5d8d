"""Tiny LLaVA-OneVision: a SigLIP tower (no [CLS]) at 70 px / patch 14 (a 5×5 grid: odd, as the real 27×27),
AnyRes crops up to 2×2 with ``anyres_max_1`` (so the larger stitched grids are bilinearly shrunk, as
``anyres_max_9`` shrinks the real model's above 9 tiles), 8-frame videos pooled 2×2 (5×5 → 3×3 per frame), and a
4-layer Qwen2 LLM. The processor is transformers' own ``LlavaOnevisionProcessor``, so the placeholder counts
(base view, unpadded and shrunk crops, ``image_newline`` rows; ``F·9 + 1`` per video) are the ones users get.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.testing.configs import tiny_text_settings
from vtr.testing.llava_next import image_shape
from vtr.testing.media import random_frames, random_image, row_prompt
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image", "video", "image+video")
SIZE, PATCH, NUM_FRAMES = 70, 14, 8
PINPOINTS = [[SIZE, 2 * SIZE], [2 * SIZE, SIZE], [2 * SIZE, 2 * SIZE]]
ASPECT = "anyres_max_1"
#: SigLIP's normalisation (mean = std = 0.5)
MEAN = STD = (0.5, 0.5, 0.5)
MEDIA_TOKENS = {"image": "<image>", "video": "<video>", "image+video": "<image>\n<video>"}


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
                              Qwen2Config, SiglipVisionConfig)

    tok = build_tokenizer()
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  image_size=SIZE, patch_size=PATCH, vision_use_head=False)
    vision.update(overrides.pop("vision", {}))
    text = tiny_text_settings(tok, overrides)
    settings = dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                    image_grid_pinpoints=PINPOINTS, vision_aspect_ratio=ASPECT, vision_feature_layer=-1,
                    vision_feature_select_strategy="full", projector_hidden_act="gelu")
    settings.update(overrides)
    config = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**vision), text_config=Qwen2Config(**text),
                                  **settings)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    size = vision["image_size"]
    media = dict(size={"height": size, "width": size}, image_mean=MEAN, image_std=STD)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(image_grid_pinpoints=settings["image_grid_pinpoints"], **media),
        video_processor=LlavaOnevisionVideoProcessor(**media), tokenizer=tok,
        num_image_tokens=(size // vision["patch_size"]) ** 2,
        vision_feature_select_strategy=settings["vision_feature_select_strategy"],
        vision_aspect_ratio=settings["vision_aspect_ratio"],
    )
    return model, processor


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed (media and prompt from that seed alone), left-padded.

    Images are wide, tall or oblong by ``seed % 3`` (LLaVA-NeXT's tiny shapes): 1×2, 2×1 or 2×2 crops, some
    unpadded, those over 1.1² tiles of patches shrunk by ``anyres_max_1``.
    """
    images, videos, texts = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if "image" in kind:
            height, width = image_shape(seed, rng)
            images.append(random_image(rng, 120, 240).resize((width, height)))
        if "video" in kind:
            videos.append(random_frames(rng, n_frames=NUM_FRAMES, side=96))
        texts.append(f"USER: {MEDIA_TOKENS[kind]}\n{row_prompt(seed)} ASSISTANT:")
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images or None, videos=videos or None, return_tensors="pt", padding=True)
