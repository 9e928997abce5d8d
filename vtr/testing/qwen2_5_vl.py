"""Tiny Qwen2.5-VL: a 4-block vision tower (width 32, patch 14, 2×2 merge, 112 px windows, full attention in
blocks 1 and 3) and a 4-layer M-RoPE LLM.

The geometry is Qwen2.5-VL's own at small scale: windowed attention over 112-pixel windows (4×4 merged
tokens, as the real model's 112 px ``window_size``) in every block but the ``fullatt_block_indexes``, so an
image over 112 px spans several windows and the tower's window permutation is exercised. Media, prompts and
the processor settings are the tiny Qwen2-VL's (:mod:`vtr.testing.qwen2_vl`): images of 16–64 merged tokens,
videos of 2–4 frame groups. The processor is transformers' own ``Qwen2_5_VLProcessor``, so videos carry
``second_per_grid_ts`` (absolute time in M-RoPE: ``tokens_per_second`` temporal positions per second).
"""
from __future__ import annotations

from typing import Any

import torch

from vtr.testing.configs import tiny_text_settings
import numpy as np

from vtr.testing import qwen2_vl
from vtr.testing.media import row_prompt
from vtr.testing.qwen2_vl import (IMAGE_TOKEN, MAX_PIXELS, MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_TOKEN, VISION_END,
                                  VISION_START, media_prompt, random_video)
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image", "video")
#: frames per second the tiny videos declare: ``second_per_grid_ts`` = 2 / FPS = 2 s per frame group, so with
#: ``tokens_per_second=2`` frame group g sits at temporal position 4·g (absolute time, not the group index)
FPS = 1.0


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = build_tokenizer(image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN, extra_specials=(VISION_START, VISION_END))
    vision_start, vision_end = tok.convert_tokens_to_ids([VISION_START, VISION_END])
    vision = dict(depth=4, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=112,
                  fullatt_block_indexes=[1, 3], tokens_per_second=2)
    # sum(mrope_section) must be head_dim / 2 = 64 / 4 / 2 = 8
    text = tiny_text_settings(tok, overrides, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 3, 3]})
    vision.update(overrides.pop("vision", {}))
    settings = dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
                    vision_start_token_id=vision_start, vision_end_token_id=vision_end)
    settings.update(overrides)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **settings)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    patch, merge, temporal = vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=patch,
                                            merge_size=merge, temporal_patch_size=temporal)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS, patch_size=patch,
                                            merge_size=merge, temporal_patch_size=temporal, cap_pixels_per_frame=False)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)
    return model, processor


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed, left-padded; videos declare :data:`FPS` in their metadata."""
    if kind == "image":
        return qwen2_vl.make_inputs(processor, kind, seeds)
    videos = [random_video(np.random.default_rng(s)) for s in seeds]
    metadata = [{"fps": FPS, "total_num_frames": len(v), "frames_indices": list(range(len(v)))} for v in videos]
    texts = [media_prompt(row_prompt(s), (kind,)) for s in seeds]
    processor.tokenizer.padding_side = "left"
    return processor(videos=videos, video_metadata=metadata, text=texts, return_tensors="pt", padding=True)


__all__ = ["build", "make_inputs", "media_prompt", "KINDS", "FPS"]
