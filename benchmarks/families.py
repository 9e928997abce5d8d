"""Prefill latency of ``vtr``'s FasterVLM on every supported family at its realistic visual geometry.

``python -m benchmarks.families`` builds, one family at a time, a random-init model with the real
model's visual geometry and times one prefill (``model(**inputs, logits_to_keep=1)``, from pixels to
last-position logits, vision tower included) of:

(a) ``unpatched``: the stock model with all visual tokens;
(b) ``fastervlm``: the same model after ``vtr.patch(model, "fastervlm", keep=k)``;
(c) ``oracle``: the stock model fed only the tokens (b) kept, with the indices known in advance:
    the model's own ``get_image_features``/``get_video_features``, a gather of the kept rows, the
    prompt's placeholder runs shrunk to the kept columns (``stats.kept_columns``), the original
    position ids of those columns (on the Qwen family the 3-D M-RoPE positions of the unreduced prompt,
    from the model's own ``get_rope_index``, gathered; on Qwen3-VL every DeepStack level's features
    gathered to the same rows; on Gemma 3 the ``token_type_ids`` gathered with the columns), then the
    LLM. (b)/(c) is vtr's overhead;
- ``vision``: the feature function alone, which every variant pays.

Cases: LLaVA-NeXT (AnyRes, 672×672 square image on the 336 base grid: 4 crops + thumbnail),
Qwen2-VL with an image and with a short video, Video-LLaVA with an 8-frame video, Qwen2.5-VL (windowed
tower) with an image and a 2 fps video, Qwen3-VL (patch 16, DeepStack) with an image, LLaVA-OneVision
(SigLIP 384 px, AnyRes-max pinpoints up to 2304 px) with the 672×672 image and an 8-frame video pooled
2×2, Gemma 3 (SigLIP 896 px pooled 4×4 to 256 tokens, bidirectional image attention) with an image.
The towers without [CLS] (the Qwen family, SigLIP) get FasterVLM's adapted signal (see each geometry line).

An untimed check first runs each keep once: (c)'s logits must match (b)'s, and the position ids
both calls hand to the LLM (read with a forward pre-hook on ``model.model.language_model``) must be
equal. Then, per case, variants are interleaved in rounds and calls disturbed by other processes
are discarded and made up for (:func:`benchmarks.report.time_rounds`). Writes
``benchmarks/results/families.json`` and the ``families`` section of ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

import vtr
from benchmarks.efficiency import Variant
from benchmarks.report import (RoundSummary, kv_cache_mib, machine_info, machine_line, markdown_table, ratio_cell,
                               time_rounds)
from benchmarks.timing_args import (TimingDefaults, command_line, parse_timing_args, publish, timing_parser,
                                    timing_setup)
from vtr.testing import chat_prompt, tiny_model
from vtr.testing.qwen2_vl import media_prompt

SECTION = "families"
KEEPS = (0.25, 0.1)
QUESTION = "describe the picture in detail please"
VIDEO_QUESTION = "what happens in this video? describe it in detail please"
CASES = ("llava_next", "qwen2_vl_image", "qwen2_vl_video", "video_llava", "qwen2_5_vl_image", "qwen2_5_vl_video",
         "qwen3_vl_image", "llava_onevision_image", "llava_onevision_video", "gemma3_image")
#: each case's model family (the adapter's name)
FAMILIES = {"llava_next": "llava_next", "qwen2_vl_image": "qwen2_vl", "qwen2_vl_video": "qwen2_vl",
            "video_llava": "video_llava", "qwen2_5_vl_image": "qwen2_5_vl", "qwen2_5_vl_video": "qwen2_5_vl",
            "qwen3_vl_image": "qwen3_vl", "llava_onevision_image": "llava_onevision",
            "llava_onevision_video": "llava_onevision", "gemma3_image": "gemma3"}
#: inputs aligned with the prompt's columns, gathered with the kept columns for the oracle
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")

#: The efficiency benchmark's widths (benchmarks/efficiency.py FULL), so figures are comparable:
#: a CLIP tower 256 wide, 6 layers, and a Llama-style LLM 1024 wide, 8 layers (~0.7 s at 589 tokens).
CLIP = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4, patch_size=14,
            projection_dim=256)
LLM = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
           num_key_value_heads=8)
FULL = dict(
    clip=CLIP, text=LLM,
    # LLaVA-NeXT: 336 px base view, AnyRes pinpoints up to 672×672; a 672×672 image → 2×2 crops + thumbnail
    next_base=336, next_image=672,
    # Qwen2-VL: patch 14, 2×2 merge, temporal patch 2; M-RoPE sections scaled to head_dim 64 (7B: [16, 24, 24] of 128)
    qwen_vision=dict(depth=6, embed_dim=256, num_heads=4, mlp_ratio=4),
    qwen_rope=[8, 12, 12], qwen_image=672, qwen_frames=8, qwen_frame_side=448,
    # Video-LLaVA: 224 px frames, patch 14 → 16×16 + [CLS] = 257 tokens per frame, 8 frames
    video_llava_size=224, video_frames=8,
    # Qwen2.5-VL: patch 14, 2×2 merge, 112 px attention windows, full attention in every 4th block as the real
    # [7, 15, 23, 31] of 32; gated MLP at the real 3420/1280 ratio; 2 fps videos (tokens_per_second 2)
    qwen25_vision=dict(depth=8, hidden_size=256, intermediate_size=684, num_heads=4, window_size=112,
                       fullatt_block_indexes=[3, 7], tokens_per_second=2),
    qwen25_fps=2.0,
    # Qwen3-VL: patch 16, 2×2 merge, learned 48×48 position grid (2304) interpolated; DeepStack features of
    # blocks [2, 5, 8] of 9 (the 8B's [8, 16, 24] of 27, scaled by 1/3) added after decoder layers 0-2;
    # interleaved M-RoPE sections scaled to head_dim 64 (8B: [24, 20, 20] of 128)
    qwen3_vision=dict(depth=9, hidden_size=256, intermediate_size=1024, num_heads=4, num_position_embeddings=2304,
                      deepstack_visual_indexes=[2, 5, 8]),
    qwen3_rope=[12, 10, 10],
    # LLaVA-OneVision: SigLIP 384 px / patch 14 (27×27 = 729 per view, no [CLS], last layer, "full"), AnyRes
    # pinpoints 384·(1..6) × 384·(1..6) with anyres_max_9; videos pooled 2×2 (27×27 → 14×14 per frame)
    onevision_base=384, onevision_image=672, onevision_frames=8,
    # Gemma 3: SigLIP 896 px / patch 14 (64×64 = 4096 patches) average-pooled 4×4 to 256 tokens; LLM sliding
    # window 1024 with one full-attention layer in 6 (the 4B's pattern), head_dim 64
    gemma_image=896, gemma_tokens=256, gemma_window=1024,
)
#: a smoke-test setting: the same code paths on tiny models, milliseconds per call
QUICK = dict(
    clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
              projection_dim=32),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    next_base=56, next_image=112,
    qwen_vision=dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2),
    qwen_rope=[2, 3, 3], qwen_image=112, qwen_frames=4, qwen_frame_side=112,
    video_llava_size=56, video_frames=8,
    qwen25_vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, window_size=112,
                       fullatt_block_indexes=[1], tokens_per_second=2),
    qwen25_fps=2.0,
    qwen3_vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, num_position_embeddings=64,
                      deepstack_visual_indexes=[0, 1]),
    qwen3_rope=[2, 3, 3],
    onevision_base=70, onevision_image=140, onevision_frames=4,
    gemma_image=224, gemma_tokens=64, gemma_window=64,
)
LABELS = {"unpatched": "(a) unpatched", "fastervlm": "(b) vtr fastervlm", "oracle": "(c) oracle: kept tokens only",
          "vision": "vision features only"}


@dataclass
class Case:
    """One model and its fixed batch-1 input.

    Attributes:
        encode: the model's own feature function(s) on the case's pixels → ``{modality: output}``.
        token_ids: the placeholder id of each modality in ``input_ids``.
        positions: the oracle's position ids for kept columns ``(n,)`` (runs inside the timed call).
        geometry: facts about the visual input for the report.
    """

    name: str
    title: str
    model: torch.nn.Module
    inputs: dict
    encode: Callable[[], dict]
    token_ids: dict[str, int]
    positions: Callable[[torch.Tensor], torch.Tensor]
    geometry: dict = field(default_factory=dict)


def astronaut(side: int):
    """``skimage.data.astronaut()`` (512×512, public domain) resized to a ``side``-pixel square."""
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.BICUBIC)


def coffee_pan(n_frames: int, side: int) -> np.ndarray:
    """``(T, side, side, 3)`` uint8: a camera pan across ``skimage.data.coffee()`` (public domain),
    resized to ``side`` × ``1.5·side``, a ``side``-wide window moving right by equal steps."""
    import skimage.data
    from PIL import Image

    wide = np.asarray(Image.fromarray(skimage.data.coffee()).resize((side * 3 // 2, side), Image.BICUBIC))
    step = (wide.shape[1] - side) // max(1, n_frames - 1)
    return np.stack([wide[:, t * step:t * step + side] for t in range(n_frames)])


def clip_settings(config: dict, image_size: int) -> dict:
    return dict(config["clip"], image_size=image_size)


def build_llava_next(config: dict, seed: int) -> Case:
    base = config["next_base"]
    model, processor = tiny_model("llava_next", seed=seed, vision=clip_settings(config, base),
                                  text=dict(config["text"]))
    image = astronaut(config["next_image"])
    inputs = dict(processor(images=image, text=chat_prompt(QUESTION), return_tensors="pt"))
    cfg, m = model.config, model.model

    def encode():
        return {"image": m.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)}

    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    side = base // config["clip"]["patch_size"]
    views = int(inputs["pixel_values"].shape[1])
    crops = get_anyres_image_grid_shape(inputs["image_sizes"][0].tolist(), cfg.image_grid_pinpoints, base)
    geometry = dict(image=f"skimage astronaut resized to {image.width}×{image.height}", views=views,
                    patches_per_view=side * side, patch_tokens=views * side * side, crop_grid=list(crops),
                    canvas=[crops[0] * base, crops[1] * base], pinpoints=cfg.image_grid_pinpoints, base=base)
    return Case("llava_next", "LLaVA-NeXT, image", model, inputs, encode, {"image": cfg.image_token_id},
                lambda cols: cols[None], geometry)


def qwen_processor(family: str, tokenizer, image_pixels: int, frame_pixels: int):
    """Transformers' own processor of the family, with pixel limits that keep the chosen resolutions."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    patch = 16 if family == "qwen3_vl" else 14
    common = dict(patch_size=patch, merge_size=2, temporal_patch_size=2)
    images = Qwen2VLImageProcessor(min_pixels=(4 * patch) ** 2, max_pixels=image_pixels, **common)
    if family == "qwen3_vl":  # images only here; the video processor is required by the class
        videos = transformers.Qwen3VLVideoProcessor(size={"shortest_edge": (4 * patch) ** 2,
                                                          "longest_edge": 8 * frame_pixels},
                                                    do_sample_frames=False, cap_pixels_per_frame=False, **common)
    else:
        videos = Qwen2VLVideoProcessor(min_pixels=(4 * patch) ** 2, max_pixels=frame_pixels,
                                       cap_pixels_per_frame=False, **common)
    cls = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[family]
    return getattr(transformers, cls)(image_processor=images, tokenizer=tokenizer, video_processor=videos)


QWEN_TITLES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}


def qwen_settings(config: dict, family: str) -> tuple[dict, dict]:
    """``(vision, text)`` overrides of the family's tiny model at the benchmark's widths."""
    llm = config["text"]
    if family == "qwen2_vl":
        return (dict(config["qwen_vision"], hidden_size=llm["hidden_size"]),
                dict(llm, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": list(config["qwen_rope"])}))
    if family == "qwen2_5_vl":
        return (dict(config["qwen25_vision"], out_hidden_size=llm["hidden_size"]),
                dict(llm, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": list(config["qwen_rope"])}))
    return (dict(config["qwen3_vision"], out_hidden_size=llm["hidden_size"]),
            dict(llm, head_dim=llm["hidden_size"] // llm["num_attention_heads"],
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                  "mrope_section": list(config["qwen3_rope"]), "mrope_interleaved": True}))


def build_qwen(config: dict, seed: int, family: str, kind: str) -> Case:
    vision, text = qwen_settings(config, family)
    model, tiny_processor = tiny_model(family, seed=seed, vision=vision, text=text)
    processor = qwen_processor(family, tiny_processor.tokenizer, config["qwen_image"] ** 2,
                               config["qwen_frame_side"] ** 2)
    m, cfg = model.model, model.config
    if kind == "image":
        image = astronaut(config["qwen_image"])
        inputs = dict(processor(images=[image], text=[media_prompt(QUESTION, ("image",))], return_tensors="pt"))
        grid_key, modality, token_id = "image_grid_thw", "image", cfg.image_token_id

        def encode():
            return {"image": m.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)}

        media = f"skimage astronaut resized to {image.width}×{image.height}"
    else:
        frames = coffee_pan(config["qwen_frames"], config["qwen_frame_side"])
        extra = {}
        if family == "qwen2_5_vl":  # absolute time in M-RoPE: the processor derives second_per_grid_ts from fps
            extra["video_metadata"] = [{"fps": config["qwen25_fps"], "total_num_frames": len(frames),
                                        "frames_indices": list(range(len(frames)))}]
        inputs = dict(processor(videos=[frames], text=[media_prompt(VIDEO_QUESTION, ("video",))], return_tensors="pt",
                                **extra))
        grid_key, modality, token_id = "video_grid_thw", "video", cfg.video_token_id

        def encode():
            return {"video": m.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                                  return_dict=True)}

        media = f"{len(frames)} frames of {frames.shape[2]}×{frames.shape[1]} (a pan across skimage coffee)"
        if family == "qwen2_5_vl":
            media += f" at {config['qwen25_fps']:g} fps"

    def positions(cols: torch.Tensor) -> torch.Tensor:
        # the model's own M-RoPE positions of the unreduced prompt, at the kept columns: (3, 1, n)
        timing = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
        rope, _ = m.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                   image_grid_thw=inputs.get("image_grid_thw"),
                                   video_grid_thw=inputs.get("video_grid_thw"),
                                   attention_mask=inputs.get("attention_mask"), **timing)
        return rope[:, :, cols]

    t, h, w = inputs[grid_key][0].tolist()
    vc = cfg.vision_config
    merge = vc.spatial_merge_size
    geometry = dict(media=media, grid_thw=[t, h, w], patches=t * h * w, merged_tokens=t * h * w // merge ** 2,
                    frame_groups=t, tokens_per_group=h * w // merge ** 2, patch_size=vc.patch_size)
    if family == "qwen2_5_vl":
        window = vc.window_size // vc.patch_size // merge  # merged tokens per window side
        geometry.update(window_px=vc.window_size, windows_per_group=-(-h // merge // window) * -(-w // merge // window),
                        fullatt_blocks=list(vc.fullatt_block_indexes), depth=vc.depth)
        if "second_per_grid_ts" in inputs:
            geometry["second_per_grid_ts"] = float(inputs["second_per_grid_ts"][0])
    if family == "qwen3_vl":
        geometry.update(deepstack_blocks=list(vc.deepstack_visual_indexes), depth=vc.depth,
                        position_grid=int(vc.num_position_embeddings ** 0.5))
    title = f"{QWEN_TITLES[family]}, {kind}"
    return Case(f"{family}_{kind}", title, model, inputs, encode, {modality: token_id}, positions, geometry)


def siglip_settings(config: dict, image_size: int) -> dict:
    """The benchmark's small vision widths as a SigLIP tower (no [CLS], no projection)."""
    clip = config["clip"]
    return dict(hidden_size=clip["hidden_size"], intermediate_size=clip["intermediate_size"],
                num_hidden_layers=clip["num_hidden_layers"], num_attention_heads=clip["num_attention_heads"],
                patch_size=clip["patch_size"], image_size=image_size)


def build_llava_onevision(config: dict, seed: int, kind: str) -> Case:
    base = config["onevision_base"]
    pinpoints = [[base * a, base * b] for a in range(1, 7) for b in range(1, 7)]
    model, processor = tiny_model("llava_onevision", seed=seed, vision=siglip_settings(config, base),
                                  text=dict(config["text"]), image_grid_pinpoints=pinpoints,
                                  vision_aspect_ratio="anyres_max_9")
    cfg, m = model.config, model.model
    side = base // config["clip"]["patch_size"]
    if kind == "image":
        image = astronaut(config["onevision_image"])
        inputs = dict(processor(images=image, text=chat_prompt(QUESTION), return_tensors="pt"))

        def encode():
            return {"image": m.get_image_features(
                inputs["pixel_values"], inputs["image_sizes"], vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                vision_aspect_ratio=cfg.vision_aspect_ratio, batch_num_images=inputs.get("batch_num_images"),
                return_dict=True)}

        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        crops = get_anyres_image_grid_shape(inputs["image_sizes"][0].tolist(), cfg.image_grid_pinpoints, base)
        views = int(inputs["pixel_values"].shape[1])
        geometry = dict(media=f"skimage astronaut resized to {image.width}×{image.height}", views=views,
                        patches_per_view=side * side, patch_tokens=views * side * side, crop_grid=list(crops),
                        canvas=[crops[0] * base, crops[1] * base], base=base, grid=side,
                        pinpoints=f"{base}·(1..6) × {base}·(1..6)", aspect=cfg.vision_aspect_ratio)
        token_id = {"image": cfg.image_token_id}
    else:
        frames = coffee_pan(config["onevision_frames"], 448 if base >= 224 else 2 * base)
        inputs = dict(processor(videos=[frames], text=chat_prompt(VIDEO_QUESTION, "<video>"),
                                return_tensors="pt"))

        def encode():
            return {"video": m.get_video_features(
                inputs["pixel_values_videos"], vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)}

        pooled = -(-side // 2)
        geometry = dict(media=f"{len(frames)} frames (a pan across skimage coffee), resized to {base}×{base}",
                        frames=len(frames), grid=side, pooled=pooled, tokens_per_frame=pooled * pooled)
        token_id = {"video": cfg.video_token_id}
    title = f"LLaVA-OneVision, {kind}"
    return Case(f"llava_onevision_{kind}", title, model, inputs, encode, token_id, lambda cols: cols[None], geometry)


def build_gemma3(config: dict, seed: int) -> Case:
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    from vtr.testing.gemma3 import BOI

    size, tokens, llm = config["gemma_image"], config["gemma_tokens"], config["text"]
    n_layers = llm["num_hidden_layers"]
    head_dim = llm["hidden_size"] // llm["num_attention_heads"]
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]
    text = dict(llm, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=config["gemma_window"],
                layer_types=layer_types)
    model, tiny_processor = tiny_model("gemma3", seed=seed, vision=siglip_settings(config, size), text=text,
                                       mm_tokens_per_image=tokens)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": size, "width": size},
                                                                     image_mean=(0.5,) * 3, image_std=(0.5,) * 3),
                                tokenizer=tiny_processor.tokenizer, image_seq_length=tokens)
    image = astronaut(size)
    inputs = dict(processor(images=[[image]], text=[f"USER: {BOI}\n{QUESTION} ASSISTANT:"], return_tensors="pt"))
    m, cfg = model.model, model.config

    def encode():
        return {"image": m.get_image_features(inputs["pixel_values"], return_dict=True)}

    side = size // config["clip"]["patch_size"]
    pooled = int(tokens ** 0.5)
    geometry = dict(media=f"skimage astronaut resized to {size}×{size}", grid=side, patches=side * side,
                    pooled=pooled, pool=side // pooled, window=config["gemma_window"],
                    full_layers=[i for i, t in enumerate(layer_types) if t == "full_attention"])
    return Case("gemma3_image", "Gemma 3, image", model, inputs, encode, {"image": cfg.image_token_id},
                lambda cols: cols[None], geometry)


def build_video_llava(config: dict, seed: int) -> Case:
    size = config["video_llava_size"]
    model, processor = tiny_model("video_llava", seed=seed, vision=clip_settings(config, size),
                                  text=dict(config["text"]))
    frames = coffee_pan(config["video_frames"], 448 if size >= 224 else 2 * size)
    inputs = dict(processor(text=[f"USER: <video>\n{VIDEO_QUESTION} ASSISTANT:"], videos=[frames],
                            return_tensors="pt", return_legacy_image_output=False))
    cfg, m = model.config, model.model

    def encode():
        return {"video": m.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                              vision_feature_layer=cfg.vision_feature_layer, return_dict=True)}

    side = size // config["clip"]["patch_size"]
    geometry = dict(media=f"{len(frames)} frames (a pan across skimage coffee), resized to {size}×{size}",
                    frames=len(frames), grid=side, tokens_per_frame=side * side + 1)
    return Case("video_llava", "Video-LLaVA, video", model, inputs, encode, {"video": cfg.video_token_id},
                lambda cols: cols[None], geometry)


def build(name: str, config: dict, seed: int) -> Case:
    if name == "llava_next":
        return build_llava_next(config, seed)
    if name == "video_llava":
        return build_video_llava(config, seed)
    if name in FAMILIES and FAMILIES[name] in QWEN_TITLES:
        family = FAMILIES[name]
        return build_qwen(config, seed, family, name.removeprefix(family + "_"))
    if name.startswith("llava_onevision_"):
        return build_llava_onevision(config, seed, name.removeprefix("llava_onevision_"))
    if name == "gemma3_image":
        return build_gemma3(config, seed)
    raise ValueError(f"unknown case {name!r}; allowed: {', '.join(CASES)}")


def gather_rows(features, rows: torch.Tensor):
    """``features`` with only ``rows`` of its (single) item's placeholder-ordered rows.

    A list/tuple of ``(L, D)`` tensors (LLaVA-NeXT, LLaVA-OneVision images, the Qwen family) or one
    ``(items, tokens, D)`` tensor (Video-LLaVA, LLaVA-OneVision videos, Gemma 3; the model flattens dims 0-1
    before scattering)."""
    if isinstance(features, torch.Tensor):
        return features.flatten(0, 1).index_select(0, rows)[None]
    if len(features) != 1:
        raise ValueError("the oracle handles one image or video per prompt")
    return type(features)([features[0].index_select(0, rows)])


def gather_output(output, rows: torch.Tensor):
    """The feature output with only ``rows`` of its features: ``pooler_output``, and on Qwen3-VL each
    DeepStack level's ``deepstack_features`` (added to the hidden states of the visual positions after
    decoder layers 0, 1, …: the stock model scatters them to the same placeholder rows as the features)."""
    output.pooler_output = gather_rows(output.pooler_output, rows)
    deepstack = getattr(output, "deepstack_features", None)
    if deepstack is not None:
        output.deepstack_features = [gather_rows(level, rows) for level in deepstack]
    return output


def oracle_prefill(case: Case, cols: torch.Tensor):
    """(c): the stock feature function, the kept rows gathered, the shrunk prompt, the LLM.

    ``cols``: ``(n,)`` kept columns of the caller's prompt (``stats.kept_columns[0]``, batch 1).
    """
    ids = case.inputs["input_ids"][0]
    mm = {}
    for modality, output in case.encode().items():
        is_token = ids == case.token_ids[modality]
        rank = is_token.long().cumsum(0) - 1  # placeholder column → feature row
        rows = rank[cols][is_token[cols]]
        mm[modality] = gather_output(output, rows)
    prompt = {k: case.inputs[k][:, cols] for k in SEQUENCE_KEYS if case.inputs.get(k) is not None}
    return case.model(**prompt, position_ids=case.positions(cols), mm_encoder_outputs=mm, logits_to_keep=1)


class LLMInputs:
    """Records the position ids and sequence length each call hands to the LLM (a forward pre-hook), and on
    Qwen3-VL the DeepStack features and their mask."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module = model.model.language_model
        self.calls: list[dict] = []

    def _hook(self, module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        self.calls.append(dict(position_ids=kwargs.get("position_ids"),
                               length=embeds.shape[1] if embeds is not None else None,
                               deepstack=kwargs.get("deepstack_visual_embeds"),
                               visual_mask=kwargs.get("visual_pos_masks")))

    def __enter__(self) -> "LLMInputs":
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def deepstack_diff(ours: dict, theirs: dict) -> dict | None:
    """Qwen3-VL: whether both calls hand the LLM the same DeepStack masks, and the largest feature difference."""
    if ours["deepstack"] is None and theirs["deepstack"] is None:
        return None
    if ours["deepstack"] is None or theirs["deepstack"] is None or len(ours["deepstack"]) != len(theirs["deepstack"]):
        raise AssertionError("only one call hands DeepStack features to the LLM, or different numbers of levels")
    masks_equal = torch.equal(ours["visual_mask"], theirs["visual_mask"])
    if not masks_equal or any(a.shape != b.shape for a, b in zip(ours["deepstack"], theirs["deepstack"])):
        raise AssertionError("the DeepStack masks or feature shapes handed to the LLM differ")
    diff = max(float((a - b).abs().max()) for a, b in zip(ours["deepstack"], theirs["deepstack"]))
    return dict(levels=len(ours["deepstack"]), rows=int(ours["deepstack"][0].shape[0]), masks_equal=masks_equal,
                max_abs_diff=diff)


def check(case: Case, keeps: tuple[float, ...]) -> tuple[dict, dict]:
    """One untimed run per keep: kept columns, stats, and that the oracle computes what (b) does.

    Returns ``(per_keep, unpatched)``.
    """
    model, inputs = case.model, case.inputs
    placeholders = torch.tensor(sorted(case.token_ids.values()))
    base = model(**inputs, logits_to_keep=1)
    n_visual = int(torch.isin(inputs["input_ids"], placeholders).sum())
    unpatched = dict(visual_tokens=n_visual, prompt_tokens=int(inputs["input_ids"].shape[1]),
                     kv_cache_mib=kv_cache_mib(base), flops_ratio=1.0)
    per_keep = {}
    for keep in keeps:
        with LLMInputs(model) as seen:
            with vtr.patched(model, "fastervlm", keep=keep):
                patched = model(**inputs, logits_to_keep=1)
                stats = model.vtr.stats
            cols = stats.kept_columns[0]
            if bool((cols < 0).any()):
                raise AssertionError("batch-1 kept columns hold padding")
            oracle = oracle_prefill(case, cols)
        ours, theirs = seen.calls[-2]["position_ids"], seen.calls[-1]["position_ids"]
        positions_equal = ours is not None and theirs is not None and torch.equal(ours, theirs)
        if not positions_equal:
            raise AssertionError(f"{case.name} keep={keep}: the oracle's position ids differ from the patched call's")
        deepstack = deepstack_diff(seen.calls[-2], seen.calls[-1])
        surviving = sum(v.grid[0] * v.grid[1] for v in stats.views)  # patches of every view that reach the LLM
        per_keep[keep] = dict(
            visual_tokens=int(stats.visual_tokens_out[0]), visual_tokens_in=int(stats.visual_tokens_in[0]),
            prompt_tokens=len(cols), kept_columns=cols.tolist(),
            kept_patches_per_view=[len(v.kept) for v in stats.views],
            view_grids=[list(v.grid) for v in stats.views], surviving_patches=surviving,
            flops_ratio=stats.flops_ratio, flops_before=stats.prefill_flops_before,
            flops_after=stats.prefill_flops_after, kv_cache_mib=kv_cache_mib(patched), notes=list(stats.notes),
            adapted=stats.adapted, oracle_max_abs_logit_diff=float((oracle.logits - patched.logits).abs().max()),
            positions_equal=positions_equal, llm_position_shape=list(ours.shape),
        )
        if deepstack is not None:
            per_keep[keep]["deepstack"] = deepstack
    return per_keep, unpatched


def variants(case: Case, per_keep: dict) -> list[Variant]:
    """The timed calls; (c) gets its columns from the check run, so selection is not timed."""
    model, inputs = case.model, case.inputs
    out = [Variant("unpatched", None, lambda: model(**inputs, logits_to_keep=1))]
    for keep, info in per_keep.items():
        cols = torch.tensor(info["kept_columns"])
        out += [
            Variant("fastervlm", keep, lambda: model(**inputs, logits_to_keep=1),
                    lambda keep=keep: vtr.patched(model, "fastervlm", keep=keep)),
            Variant("oracle", keep, lambda cols=cols: oracle_prefill(case, cols)),
        ]
    out.append(Variant("vision", None, case.encode))
    return out


def summarise(case: Case, vs: list[Variant], timing: dict, max_foreign: float, per_keep: dict,
              unpatched: dict) -> dict:
    """Rows (one per variant) and ratios of variants measured in the same rounds."""
    s = RoundSummary([v.label for v in vs], timing, max_foreign)
    rows = []
    for v in vs:
        info = unpatched if v.keep is None else per_keep[v.keep]
        row = dict(case=case.name, variant=v.name, label=LABELS[v.name], keep=v.keep, **s.row(v.label))
        if v.name != "vision":
            row.update(visual_tokens=info["visual_tokens"], prompt_tokens=info["prompt_tokens"],
                       flops_ratio=info["flops_ratio"], speedup=s.ratio("unpatched", v.label),
                       kv_cache_mib=info["kv_cache_mib"] if v.name != "oracle" else None,
                       adapted=info.get("adapted", False))
        if v.name == "fastervlm":
            row["patched_over_oracle"] = s.ratio(v.label, f"oracle@{v.keep}")
        if v.name == "vision":
            row["share_of_unpatched"] = s.ratio("vision", "unpatched")
        rows.append(row)
    dropped, calls = s.dropped()
    return dict(rows=rows, dropped=dropped, calls=calls, spread=list(s.spread()))


def run_case(name: str, config: dict, args, keeps, log) -> dict:
    case = build(name, config, args.seed)
    per_keep, unpatched = check(case, keeps)
    vs = variants(case, per_keep)
    log(f"{case.title}: {unpatched['prompt_tokens']} prompt tokens, {unpatched['visual_tokens']} visual")
    timing = time_rounds(vs, args.warmup, args.repeats, args.max_foreign, args.max_seconds, log)
    text_config = case.model.config.get_text_config()
    result = dict(
        case=name, title=case.title, family=FAMILIES[name],
        geometry=case.geometry, visual_tokens=unpatched["visual_tokens"], prompt_tokens=unpatched["prompt_tokens"],
        llm=dict(hidden_size=text_config.hidden_size, num_hidden_layers=text_config.num_hidden_layers,
                 num_attention_heads=text_config.num_attention_heads,
                 num_key_value_heads=text_config.num_key_value_heads, intermediate_size=text_config.intermediate_size),
        attention=case.model.config._attn_implementation, dtype=str(case.model.dtype).removeprefix("torch."),
        timing={k: v for k, v in timing.items() if k not in ("seconds", "foreign")},
        checks={str(k): v for k, v in per_keep.items()}, unpatched=unpatched,
        summary=summarise(case, vs, timing, args.max_foreign, per_keep, unpatched),
    )
    del case, vs
    gc.collect()
    return result


def geometry_line(result: dict) -> str:
    """One sentence per case: what the visual input is, how many tokens it gives and what ``keep`` counts."""
    g, n, family = result["geometry"], result["visual_tokens"], result["family"]
    first = next(iter(result["checks"].values()))
    prompt = f"{n:,} visual tokens in a {result['prompt_tokens']:,}-token prompt"
    head = f"**{result['title']}**: {g.get('media', g.get('image'))}"
    if family == "llava_next":
        newlines = n - first["surviving_patches"]
        unpadded = g["patch_tokens"] - first["surviving_patches"]
        rows, cols = g["crop_grid"]
        return (f"**{result['title']}**: {g['image']}, base view {g['base']} px, pinpoints {g['pinpoints']}: "
                f"{g['views']} views (thumbnail + {rows}×{cols} crops of the {g['canvas'][1]}×{g['canvas'][0]} "
                f"canvas) × {g['patches_per_view']} = {g['patch_tokens']:,} patch tokens; stock `spatial_unpad` "
                f"removes {unpadded} (a square image fills its square canvas), and {newlines} `image_newline` tokens "
                f"(one per row of the stitched crop grid) make {n:,} visual tokens in a "
                f"{result['prompt_tokens']:,}-token prompt. `keep` applies per view; newlines are always kept.")
    if family in QWEN_TITLES:
        t, h, w = g["grid_thw"]
        groups = f"{t} frame groups × {g['tokens_per_group']}" if t > 1 else f"{g['tokens_per_group']}"
        line = (f"{head}: patch {g.get('patch_size', 14)}, grid (t, h, w) = ({t}, {h}, {w}) → {g['patches']:,} "
                f"patches, 2×2-merged to {groups} = {prompt}; `keep` counts merged tokens per "
                f"{'frame group' if t > 1 else 'image'}.")
        if family == "qwen2_5_vl":
            line += (f" The tower attends within {g['window_px']} px windows ({g['windows_per_group']} per "
                     f"{'frame group' if t > 1 else 'image'}) except in full-attention blocks "
                     f"{g['fullatt_blocks']} of {g['depth']}")
            line += (f"; videos carry absolute time (`second_per_grid_ts` = {g['second_per_grid_ts']:g} s per "
                     f"group) in the M-RoPE ids." if "second_per_grid_ts" in g else ".")
            signal = "in the last full-attention vision block, put back from window order into raster order"
        elif family == "qwen3_vl":
            stack = first.get("deepstack", {})
            line += (f" DeepStack: the merged features of vision blocks {g['deepstack_blocks']} (of {g['depth']}) "
                     f"are added to the visual positions' hidden states after decoder layers 0–"
                     f"{len(g['deepstack_blocks']) - 1}; (b) and (c) hand the LLM only the kept rows of each level "
                     f"({stack.get('levels', '?')} levels).")
            signal = "in the last vision block"
        else:
            signal = "in the last vision block"
        return (line + " FasterVLM here is **adapted**: the tower has no [CLS]; the signal is the attention each "
                       f"merged token receives {signal}.")
    if family == "llava_onevision":
        adapted = " FasterVLM here is **adapted**: SigLIP has no [CLS]; the signal is the attention each patch " \
                  "receives at the feature layer, laid out like the features."
        if "frames" in g:
            return (f"{head}: {g['frames']} frames × {g['grid']}×{g['grid']} patches, bilinearly pooled to "
                    f"{g['pooled']}×{g['pooled']} = {g['tokens_per_frame']} per frame, + one `image_newline` after "
                    f"the last frame = {prompt}; `keep` applies per frame to its {g['tokens_per_frame']} pooled "
                    f"tokens, the newline is kept." + adapted)
        rows, cols = g["crop_grid"]
        grids = first["view_grids"]
        stitched = grids[1] if len(grids) > 1 else [0, 0]
        newlines = n - first["surviving_patches"]
        full = [rows * g["grid"], cols * g["grid"]]
        packed = ("unpadded/shrunk to" if list(stitched) != full else "stitched to")
        shrink = (f"(`{g['aspect']}`: {full[0] * full[1]:,} ≤ 9 × {g['patches_per_view']} patches, so not shrunk)"
                  if list(stitched) == full else f"(`{g['aspect']}` shrinks it)")
        return (f"{head}, base view {g['base']} px ({g['grid']}×{g['grid']} = {g['patches_per_view']} patches), "
                f"pinpoints {g['pinpoints']}: the base view + {rows}×{cols} crops of the {g['canvas'][1]}×"
                f"{g['canvas'][0]} canvas, {packed} one {stitched[0]}×{stitched[1]} grid {shrink}, + {newlines} "
                f"`image_newline` tokens (one per row of that grid) = {prompt}. `keep` applies per view: the base "
                f"view and the stitched crop grid; newlines are always kept." + adapted)
    if family == "gemma3":
        return (f"{head}: SigLIP patch 14, {g['grid']}×{g['grid']} = {g['patches']:,} patches average-pooled "
                f"{g['pool']}×{g['pool']} to {g['pooled']}×{g['pooled']} = {prompt} (with `<start_of_image>`/"
                f"`<end_of_image>`); `keep` counts the image's pooled tokens. The image tokens attend to each other "
                f"bidirectionally (`token_type_ids`, gathered with the kept columns in (c)); the LLM's sliding "
                f"window is {g['window']} tokens, full attention in layers {g['full_layers'] or 'none'}. FasterVLM "
                f"here is **adapted**: SigLIP has no [CLS]; the signal is the attention each patch receives at the "
                f"last layer, average-pooled like the features.")
    return (f"**{result['title']}**: {g['media']}: {g['frames']} frames × {g['tokens_per_frame']} "
            f"({g['grid']}×{g['grid']} patches + the frame's [CLS]) = {n:,} visual tokens in a "
            f"{result['prompt_tokens']:,}-token prompt; `keep` applies per frame to the {g['grid'] ** 2} patches, "
            f"each frame's [CLS] is kept.")


def markdown(result: dict) -> str:
    """The ``families`` section of BENCHMARKS.md."""
    s = result["setup"]
    header = ["model, input", "variant", "keep", "visual tokens", "prompt tokens", "min s", "median s", "n",
              "speed-up vs (a)", "(b)/(c)", "FLOPs ratio", "KV cache MiB"]
    table, spreads, dropped, calls, budget_hit = [], [], 0, 0, False
    for case in result["cases"]:
        summary = case["summary"]
        dropped, calls = dropped + summary["dropped"], calls + summary["calls"]
        spreads += summary["spread"]
        budget_hit = budget_hit or case["timing"]["budget_hit"]
        for row in summary["rows"]:
            vision = row["variant"] == "vision"
            label = row["label"] + (" (adapted)" if row.get("adapted") and row["variant"] == "fastervlm" else "")
            if vision:
                label += f" ({row['share_of_unpatched']['min']:.0%} of (a))"
            table.append([
                case["title"], label, "—" if row["keep"] is None else row["keep"],
                "—" if vision else f"{row['visual_tokens']:,}", "—" if vision else f"{row['prompt_tokens']:,}",
                f"{row['min_s']:.3f}", f"{row['median_s']:.3f}", row["n_clean"] if not row["contended"] else "0 (!)",
                "—" if vision else ratio_cell(row["speedup"], 2, "×"), ratio_cell(row.get("patched_over_oracle")),
                "—" if vision else f"{row['flops_ratio']:.3f}",
                "—" if row.get("kv_cache_mib") is None else f"{row['kv_cache_mib']:.1f}",
            ])
    checks = [c for case in result["cases"] for c in case["checks"].values()]
    diff = max(c["oracle_max_abs_logit_diff"] for c in checks)
    positions = all(c["positions_equal"] for c in checks)
    stacks = [c["deepstack"] for c in checks if "deepstack" in c]
    stack_diff = max((d["max_abs_diff"] for d in stacks), default=0.0)
    llm, clip, qv = s["config"]["text"], s["config"]["clip"], s["config"]["qwen_vision"]
    q25, q3 = s["config"]["qwen25_vision"], s["config"]["qwen3_vision"]
    command = "python -m benchmarks.families" + " --quick" * s["quick"]
    warning = (" **Not enough quiet time for some case: some variants have fewer clean samples than asked; treat "
               "those figures as rough.**" if budget_hit else "")
    paragraphs = [
        f"## Model families: prefill latency of FasterVLM at each family's geometry (`{command}`)",
        "Random-init models with the real models' visual geometry and the efficiency benchmark's widths, so "
        f"the figures compare with the section above: every LLM is {llm['hidden_size']} wide, "
        f"{llm['num_hidden_layers']} layers, {llm['num_attention_heads']} heads / {llm['num_key_value_heads']} KV "
        f"heads, MLP {llm['intermediate_size']}, Llama/Qwen2-style unless said below (Qwen2-VL's with M-RoPE sections "
        f"{s['config']['qwen_rope']}); the CLIP towers (LLaVA-NeXT, Video-LLaVA) are {clip['hidden_size']} wide with "
        f"{clip['num_hidden_layers']} layers, patch {clip['patch_size']}, features of layer -2; Qwen2-VL's vision "
        f"tower is {qv['embed_dim']} wide with {qv['depth']} blocks, patch 14, 2×2 merge, temporal patch 2; "
        f"Qwen2.5-VL's {q25['hidden_size']} wide with {q25['depth']} blocks (gated MLP {q25['intermediate_size']}), "
        f"{q25['window_size']} px windows, full attention in blocks {q25['fullatt_block_indexes']}; Qwen3-VL's "
        f"{q3['hidden_size']} wide with {q3['depth']} blocks, patch 16, DeepStack from blocks "
        f"{q3['deepstack_visual_indexes']}; the SigLIP towers (LLaVA-OneVision at {s['config']['onevision_base']} px, "
        f"Gemma 3 at {s['config']['gemma_image']} px) as wide and deep as the CLIP ones, patch {clip['patch_size']}, "
        f"no [CLS], last-layer features. Qwen2.5-VL's LLM is Qwen2's with the same M-RoPE sections; Qwen3-VL's is "
        f"Qwen3's (q/k norms, interleaved M-RoPE sections {s['config']['qwen3_rope']}); LLaVA-OneVision's is "
        f"Qwen2's; Gemma 3's is Gemma 3's (head_dim {llm['hidden_size'] // llm['num_attention_heads']}, sliding "
        f"window {s['config']['gemma_window']} in 5 of every 6 layers), all at these widths. The prompts carry "
        f"\"{QUESTION}\" (images) or \"{VIDEO_QUESTION}\" (videos).",
        "\n".join(f"- {geometry_line(case)}" for case in result["cases"]),
        f"Each time is one `model(**inputs, logits_to_keep=1)` prefill from pixels to last-position logits, batch 1, "
        f"{s['dtype']}, {s['attention']} attention, `no_grad`, {result['machine']['torch_threads']} threads. Cases "
        f"run one after another (one model in memory at a time); within a case, after an untimed check run of "
        f"every variant and {s['warmup']} warm-up round(s), every round runs all its variants interleaved in a "
        f"rotating order, and calls during which other processes kept more than {s['max_foreign']} of a core busy "
        f"are discarded until every variant has {s['repeats']} clean samples (here {dropped} of {calls} calls "
        f"discarded; n: clean samples used).{warning} Ratios are of the min times, and in brackets the median of "
        f"per-round ratios over rounds where both calls were clean; clean samples still spread (medians "
        f"{min(spreads):.0%} to {max(spreads):.0%} above the mins), so ratios within a few percent of 1 are ties. "
        f"FLOPs ratio: analytic LLM prefill FLOPs after/before (`model.vtr.stats.flops_ratio`; vision tower not "
        f"counted). KV cache: measured size of the cache the prefill returns.",
        "- (a) the stock model, all visual tokens; (b) `vtr.patch(model, \"fastervlm\", keep=k)`;\n"
        "- (c) oracle: the stock model given only (b)'s kept tokens, indices known in advance: the model's own "
        "`get_image_features`/`get_video_features`, the kept rows gathered, placeholder runs shrunk to "
        "`stats.kept_columns`, the original position ids of the kept columns passed as `position_ids` (on the Qwen "
        "family the 3-D M-RoPE ids of the unreduced prompt from the model's own `get_rope_index`, gathered; built "
        "independently of vtr's adapter; on Qwen3-VL each DeepStack level's features gathered to the same rows; on "
        "Gemma 3 the `token_type_ids` gathered with the columns), then the LLM: the floor for any pre-LLM reducer, "
        "so (b)/(c) is vtr's overhead (probe, scoring, splice);\n"
        "- vision features only: the feature function alone, which every variant pays, and its share of (a).",
        markdown_table(header, table, align="llrrrrrrrrrr"),
        f"Checks: (c)'s logits match (b)'s in every case (max |Δ| {diff:.1e}); the position ids (c) and (b) hand to "
        f"the LLM, read by a forward pre-hook on `model.model.language_model`, are equal: "
        f"{'yes' if positions else 'NO'}" + (
            f"; so are the DeepStack masks, and the DeepStack features differ by at most {stack_diff:.1e}"
            if stacks else "") + ".",
        machine_line(result["machine"]),
    ]
    runs: dict[tuple, list[str]] = {}  # --carry-cases: some cases come from an earlier run of the same models
    for case in result["cases"]:
        t = case.get("timing_settings", {})
        key = (case.get("measured", result["machine"]["date"]), case.get("cpu", result["machine"].get("cpu")),
               t.get("warmup", s["warmup"]),
               t.get("repeats", s["repeats"]), t.get("max_seconds", s["max_seconds"]))
        runs.setdefault(key, []).append(case["title"])
    if len(runs) > 1:
        paragraphs.insert(-1, "Measured in separate runs of the same models (`--carry-cases`; the timing "
                          "paragraph and the machine line give the latest run's): " + "; ".join(
                              f"{', '.join(titles)} on {date}, {cpu} ({warmup} warm-up round(s), {repeats} clean "
                              f"samples wanted, {budget:g} s budget)"
                              for (date, cpu, warmup, repeats, budget), titles in sorted(runs.items())) + ".")
    return "\n\n".join(paragraphs) + "\n"


#: one warm-up round per case: the untimed check has already run every variant once
TIMING = TimingDefaults(warmup=1, repeats=5, max_seconds=180.0, quick_warmup=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = timing_parser("benchmarks.families", __doc__, SECTION, TIMING, keeps=KEEPS)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="cases to run (default: all)")
    p.add_argument("--carry-cases", action="store_true",
                   help="keep the cases not run from the existing --json result (same settings required; each "
                        "keeps its own measurement date, stated in the section)")
    return parse_timing_args(p, argv, TIMING)


def carried_cases(args: argparse.Namespace, config: dict, keeps: tuple[float, ...]) -> dict[str, dict]:
    """``--carry-cases``: the cases of the existing ``--json`` result that this run does not measure.

    Refused unless that result was measured with the same models, keeps and seed; the timing settings may
    differ (a busy machine may only allow fewer rounds for the new cases): each case keeps its own, stated in
    the section. Its model settings may lack entries of families added since; those it has must be equal."""
    import json
    from pathlib import Path

    path = Path(args.json)
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    setup = old.get("setup", {})
    differ = [k for k, v in dict(quick=args.quick, seed=args.seed, keeps=list(keeps)).items() if setup.get(k) != v]
    models = json.loads(json.dumps(config))
    differ += sorted(f"config.{k}" for k, v in setup.get("config", {}).items() if models.get(k) != v)
    if differ:
        raise SystemExit(f"--carry-cases: {path} was measured with other settings ({', '.join(differ)}); "
                         "rerun every case instead")
    timing = {k: setup[k] for k in ("warmup", "repeats", "max_foreign", "max_seconds") if k in setup}
    return {c["case"]: dict(c, measured=c.get("measured", old["machine"]["date"]),
                            cpu=c.get("cpu", old["machine"].get("cpu")),
                            timing_settings=c.get("timing_settings", timing))
            for c in old["cases"] if c["case"] not in args.cases}


def main(argv: list[str] | None = None, log=print) -> dict:
    """Run the benchmark; writes the JSON and the markdown section and returns the result dict."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = QUICK if args.quick else FULL
    keeps = tuple(sorted(set(args.keeps), reverse=True))
    carried = carried_cases(args, config, keeps) if args.carry_cases else {}
    cases = []
    try:
        with torch.no_grad():
            for name in [c for c in CASES if c in args.cases]:
                cases.append(run_case(name, config, args, keeps, log))
        info = machine_info(dtype=cases[0]["dtype"], attention=cases[0]["attention"])
    finally:
        torch.set_num_threads(threads)
    for case in cases:
        case["measured"], case["cpu"] = info["date"], info.get("cpu")
        case["timing_settings"] = {k: v for k, v in timing_setup(args).items() if k not in ("quick", "seed")}
    run = {c["case"]: c for c in cases}
    cases = [run.get(name) or carried[name] for name in CASES if name in run or name in carried]
    result = dict(
        benchmark=SECTION,
        command=command_line("benchmarks.families", argv),
        machine=info,
        setup=dict(**timing_setup(args), keeps=list(keeps), config=config,
                   dtype=cases[0]["dtype"], attention=cases[0]["attention"]),
        cases=cases,
    )
    return publish(args, SECTION, result, markdown, log)


if __name__ == "__main__":
    main()
