"""Tiny Video-LLaVA: two CLIP towers at 224 px / patch 14 (16×16 patches + [CLS]), 8-frame videos,
and a 4-layer Llama.

An image gives 256 placeholders (the image path drops [CLS]); a video gives 8 × 257 = 2,056
(the video path keeps each frame's [CLS]). The processor is transformers' own
``VideoLlavaProcessor`` with ``VideoLlavaImageProcessor`` and ``VideoLlavaVideoProcessor``, built
from explicit settings; inputs carry ``pixel_values`` (not the deprecated ``pixel_values_images``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vtr.media.images import CLIP_MEAN, CLIP_STD
from vtr.testing.media import random_frames, random_image, row_prompt
from vtr.testing.configs import tiny_clip_settings, tiny_text_settings
from vtr.testing.tokenizer import build_tokenizer

KINDS = ("image", "video", "image+video")
NUM_FRAMES = 8
#: the placeholder text of each kind, in LLaVA's "USER: <media>\n{question} ASSISTANT:" format
MEDIA_TOKENS = {"image": "<image>", "video": "<video>", "image+video": "<image>\n<video>"}


def build(seed: int, overrides: dict[str, Any]):
    from transformers import (CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration,
                              VideoLlavaImageProcessor, VideoLlavaProcessor, VideoLlavaVideoProcessor)

    tok = build_tokenizer()
    vision = tiny_clip_settings(224, overrides)
    text = tiny_text_settings(tok, overrides)
    grid = vision["image_size"] // vision["patch_size"]
    settings = dict(image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
                    vision_feature_layer=-2, vision_feature_select_strategy="default",
                    image_seq_length=grid * grid, video_seq_length=NUM_FRAMES * (grid * grid + 1),
                    projector_hidden_act="gelu")
    settings.update(overrides)
    config = VideoLlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text), **settings)
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).eval()
    size = vision["image_size"]
    media = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                 image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**media), video_processor=VideoLlavaVideoProcessor(**media),
        tokenizer=tok, patch_size=vision["patch_size"],
        vision_feature_select_strategy=settings["vision_feature_select_strategy"], num_additional_image_tokens=1,
    )
    return model, processor


def make_inputs(processor, kind: str, seeds: list[int]):
    """Processor outputs with one row per seed, left-padded.

    Each row's media and question come from its seed alone (the image first, then the 8 frames,
    from one generator), so a row is the same whatever batch it is drawn in.
    """
    images, videos, texts = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if "image" in kind:
            images.append(random_image(rng))
        if "video" in kind:
            videos.append(random_frames(rng, n_frames=NUM_FRAMES, side=240))
        texts.append(f"USER: {MEDIA_TOKENS[kind]}\n{row_prompt(seed)} ASSISTANT:")
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images or None, videos=videos or None, return_tensors="pt", padding=True,
                     return_legacy_image_output=False)
