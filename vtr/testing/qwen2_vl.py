"""Tiny Qwen2-VL: a 2-block vision tower (embed 32, patch 14, 2×2 merge) and a 4-layer M-RoPE LLM.

Images are resized by the real ``Qwen2VLImageProcessor`` to 112²…224² pixels, i.e. 16–64 merged
tokens each; videos are 4–8 frames of 112–168 px, grouped in pairs (``temporal_patch_size=2``) into
2–4 frame groups of 16–36 merged tokens. Prompts name the media explicitly with
``<|vision_start|><|image_pad|><|vision_end|>`` (the processor expands the pad token), and rows are
left-padded.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.testing.configs import tiny_text_settings
from vtr.testing.media import random_frames, random_image, row_prompt
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image", "video")
IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
MIN_PIXELS, MAX_PIXELS = 112 * 112, 224 * 224
VIDEO_MAX_PIXELS = 168 * 168


def media_prompt(question: str, kinds: tuple[str, ...] = ("image",)) -> str:
    """A prompt with one ``<|vision_start|>…<|vision_end|>`` block per item of ``kinds``, then the question."""
    blocks = "".join(f"{VISION_START}{IMAGE_TOKEN if k == 'image' else VIDEO_TOKEN}{VISION_END}" for k in kinds)
    return f"USER: {blocks}{question} ASSISTANT:"


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    tok = build_tokenizer(image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN, extra_specials=(VISION_START, VISION_END))
    vision_start, vision_end = tok.convert_tokens_to_ids([VISION_START, VISION_END])
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    # sum(mrope_section) must be head_dim / 2 = 64 / 4 / 2 = 8
    text = tiny_text_settings(tok, overrides, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 3, 3]})
    vision.update(overrides.pop("vision", {}))
    settings = dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                    vision_start_token_id=vision_start, vision_end_token_id=vision_end)
    settings.update(overrides)
    config = Qwen2VLConfig(vision_config=vision, text_config=text, **settings)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    patch, merge, temporal = vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=patch,
                                            merge_size=merge, temporal_patch_size=temporal)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS, patch_size=patch,
                                            merge_size=merge, temporal_patch_size=temporal, cap_pixels_per_frame=False)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)
    return model, processor


def random_video(rng: np.random.Generator) -> np.ndarray:
    """``(T, H, W, 3)`` uint8, T in {4, 6, 8} (whole frame pairs), square side in [112, 168]."""
    n_frames = 2 * int(rng.integers(2, 5))
    return random_frames(rng, n_frames=n_frames, side=int(rng.integers(112, 169)))


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed (media and prompt drawn from that seed), left-padded."""
    rngs = [np.random.default_rng(s) for s in seeds]
    texts = [media_prompt(row_prompt(s), (kind,)) for s in seeds]
    processor.tokenizer.padding_side = "left"
    if kind == "image":
        return processor(images=[random_image(r) for r in rngs], text=texts, return_tensors="pt", padding=True)
    return processor(videos=[random_video(r) for r in rngs], text=texts, return_tensors="pt", padding=True)
