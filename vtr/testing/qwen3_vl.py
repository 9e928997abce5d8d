"""Tiny Qwen3-VL: a 4-block vision tower (width 32, patch 16, 2×2 merge, learned position grid) with DeepStack
mergers after blocks 0, 1 and 2, whose features are added to the hidden states of visual tokens after decoder
layers 0, 1 and 2 of a 4-layer LLM with interleaved M-RoPE and q/k norms.

Images are resized by ``Qwen2VLImageProcessor`` (patch 16) to 128²…256² pixels, i.e. 16–64 merged tokens each;
videos are 4–8 frames, 2–4 frame groups, each group its own ``<t seconds><|vision_start|>…<|vision_end|>`` block
as ``Qwen3VLProcessor`` writes them (timestamps from the declared fps).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.testing.configs import tiny_text_settings
from vtr.testing.media import random_frames, random_image, row_prompt
from vtr.testing.qwen2_vl import IMAGE_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START, media_prompt
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image", "video")
PATCH = 16
MIN_PIXELS, MAX_PIXELS = 128 * 128, 256 * 256
FPS = 2.0


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    tok = build_tokenizer(image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN,
                          named={"vision_start_token": VISION_START, "vision_end_token": VISION_END})
    vision_start, vision_end = tok.convert_tokens_to_ids([VISION_START, VISION_END])
    vision = dict(depth=4, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=4, patch_size=PATCH,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1, 2])
    # sum(mrope_section) must be head_dim / 2 = 16 / 2 = 8
    text = tiny_text_settings(tok, overrides, head_dim=16, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    vision.update(overrides.pop("vision", {}))
    settings = dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                    vision_start_token_id=vision_start, vision_end_token_id=vision_end)
    settings.update(overrides)
    config = Qwen3VLConfig(vision_config=vision, text_config=text, **settings)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    merge, temporal = vision["spatial_merge_size"], vision["temporal_patch_size"]
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH,
                                            merge_size=merge, temporal_patch_size=temporal)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": 8 * 192 * 192},
                                            patch_size=PATCH, merge_size=merge, temporal_patch_size=temporal,
                                            do_sample_frames=False, cap_pixels_per_frame=False)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)
    return model, processor


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed (media and prompt drawn from that seed), left-padded."""
    rngs = [np.random.default_rng(s) for s in seeds]
    # a video's frame groups each get their own <|vision_start|>…<|vision_end|> block from the processor
    texts = [media_prompt(row_prompt(s)) if kind == "image" else f"USER: {VIDEO_TOKEN}{row_prompt(s)} ASSISTANT:"
             for s in seeds]
    processor.tokenizer.padding_side = "left"
    if kind == "image":
        return processor(images=[random_image(r) for r in rngs], text=texts, return_tensors="pt", padding=True)
    videos = [random_frames(r, n_frames=2 * int(r.integers(2, 5)), side=int(r.integers(128, 193))) for r in rngs]
    metadata = [{"fps": FPS, "total_num_frames": len(v), "frames_indices": list(range(len(v)))} for v in videos]
    return processor(videos=videos, video_metadata=metadata, text=texts, return_tensors="pt", padding=True)
