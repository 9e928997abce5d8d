"""Prefill latency of ``vtr``'s FasterVLM on every supported family at its realistic visual geometry.

``python -m benchmarks.families`` builds, one family at a time, a random-init model with the real
model's visual geometry and times one prefill (``model(**inputs, logits_to_keep=1)``, from pixels to
last-position logits, vision tower included) of:

(a) ``unpatched``: the stock model with all visual tokens;
(b) ``fastervlm``: the same model after ``vtr.patch(model, "fastervlm", keep=k)``;
(c) ``oracle``: the stock model fed only the tokens (b) kept, with the indices known in advance:
    the model's own ``get_image_features``/``get_video_features``, a gather of the kept rows, the
    prompt's placeholder runs shrunk to the kept columns (``stats.kept_columns``), the original
    position ids of those columns (on Qwen2-VL the 3-D M-RoPE positions of the unreduced prompt,
    from the model's own ``get_rope_index``, gathered), then the LLM. (b)/(c) is vtr's overhead;
- ``vision``: the feature function alone, which every variant pays.

Cases: LLaVA-NeXT (AnyRes, 672×672 square image on the 336 base grid: 4 crops + thumbnail),
Qwen2-VL with an image and with a short video, Video-LLaVA with an 8-frame video.

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
CASES = ("llava_next", "qwen2_vl_image", "qwen2_vl_video", "video_llava")
#: inputs aligned with the prompt's columns, gathered with the kept columns for the oracle
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")

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


def qwen_processor(tokenizer, image_pixels: int, frame_pixels: int):
    """Transformers' own Qwen2-VL processor, with pixel limits that keep the chosen resolutions."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    common = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    images = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=image_pixels, **common)
    videos = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=frame_pixels, cap_pixels_per_frame=False, **common)
    return Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos)


def build_qwen2_vl(config: dict, seed: int, kind: str) -> Case:
    text = dict(config["text"], rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": list(config["qwen_rope"])})
    vision = dict(config["qwen_vision"], hidden_size=config["text"]["hidden_size"])
    model, tiny_processor = tiny_model("qwen2_vl", seed=seed, vision=vision, text=text)
    processor = qwen_processor(tiny_processor.tokenizer, config["qwen_image"] ** 2, config["qwen_frame_side"] ** 2)
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
        inputs = dict(processor(videos=[frames], text=[media_prompt(VIDEO_QUESTION, ("video",))], return_tensors="pt"))
        grid_key, modality, token_id = "video_grid_thw", "video", cfg.video_token_id

        def encode():
            return {"video": m.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                                  return_dict=True)}

        media = f"{len(frames)} frames of {frames.shape[2]}×{frames.shape[1]} (a pan across skimage coffee)"

    def positions(cols: torch.Tensor) -> torch.Tensor:
        # the model's own M-RoPE positions of the unreduced prompt, at the kept columns: (3, 1, n)
        rope, _ = m.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                   image_grid_thw=inputs.get("image_grid_thw"),
                                   video_grid_thw=inputs.get("video_grid_thw"),
                                   attention_mask=inputs.get("attention_mask"))
        return rope[:, :, cols]

    t, h, w = inputs[grid_key][0].tolist()
    merge = model.config.vision_config.spatial_merge_size
    geometry = dict(media=media, grid_thw=[t, h, w], patches=t * h * w, merged_tokens=t * h * w // merge ** 2,
                    frame_groups=t, tokens_per_group=h * w // merge ** 2)
    title = f"Qwen2-VL, {'image' if kind == 'image' else 'video'}"
    return Case(f"qwen2_vl_{kind}", title, model, inputs, encode, {modality: token_id}, positions, geometry)


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
    if name.startswith("qwen2_vl_"):
        return build_qwen2_vl(config, seed, name.removeprefix("qwen2_vl_"))
    if name == "video_llava":
        return build_video_llava(config, seed)
    raise ValueError(f"unknown case {name!r}; allowed: {', '.join(CASES)}")


def gather_output(output, rows: torch.Tensor):
    """The feature output with only ``rows`` of its (single) item's placeholder-ordered features.

    ``pooler_output`` is a list/tuple of ``(L, D)`` tensors (LLaVA-NeXT, Qwen2-VL) or a
    ``(frames, tokens, D)`` tensor (Video-LLaVA; the model flattens dims 0-1 before scattering).
    """
    features = output.pooler_output
    if isinstance(features, torch.Tensor):
        output.pooler_output = features.flatten(0, 1).index_select(0, rows)[None]
    else:
        if len(features) != 1:
            raise ValueError("the oracle handles one image or video per prompt")
        output.pooler_output = type(features)([features[0].index_select(0, rows)])
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
    """Records the position ids and sequence length each call hands to the LLM (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module = model.model.language_model
        self.calls: list[dict] = []

    def _hook(self, module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        self.calls.append(dict(position_ids=kwargs.get("position_ids"),
                               length=embeds.shape[1] if embeds is not None else None))

    def __enter__(self) -> "LLMInputs":
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


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
        case=name, title=case.title, family="qwen2_vl" if name.startswith("qwen2_vl") else name,
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
    """One sentence per case: what the visual input is and how many tokens it gives."""
    g, n = result["geometry"], result["visual_tokens"]
    first = next(iter(result["checks"].values()))
    if result["case"] == "llava_next":
        newlines = n - first["surviving_patches"]
        unpadded = g["patch_tokens"] - first["surviving_patches"]
        rows, cols = g["crop_grid"]
        return (f"**{result['title']}**: {g['image']}, base view {g['base']} px, pinpoints {g['pinpoints']}: "
                f"{g['views']} views (thumbnail + {rows}×{cols} crops of the {g['canvas'][1]}×{g['canvas'][0]} "
                f"canvas) × {g['patches_per_view']} = {g['patch_tokens']:,} patch tokens; stock `spatial_unpad` "
                f"removes {unpadded} (a square image fills its square canvas), and {newlines} `image_newline` tokens "
                f"(one per row of the stitched crop grid) make {n:,} visual tokens in a "
                f"{result['prompt_tokens']:,}-token prompt. `keep` applies per view; newlines are always kept.")
    if result["case"].startswith("qwen2_vl"):
        t, h, w = g["grid_thw"]
        groups = f"{t} frame groups × {g['tokens_per_group']}" if t > 1 else f"{g['tokens_per_group']}"
        return (f"**{result['title']}**: {g['media']}: grid (t, h, w) = ({t}, {h}, {w}) → {g['patches']:,} patches, "
                f"2×2-merged to {groups} = {n:,} visual tokens in a {result['prompt_tokens']:,}-token prompt "
                f"(`keep` per {'frame group' if t > 1 else 'image'}). FasterVLM here is **adapted**: the tower has "
                f"no [CLS]; the signal is the attention each merged token receives in the last vision block.")
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
    llm, clip, qv = s["config"]["text"], s["config"]["clip"], s["config"]["qwen_vision"]
    command = "python -m benchmarks.families" + " --quick" * s["quick"]
    warning = (" **Not enough quiet time for some case: some variants have fewer clean samples than asked; treat "
               "those figures as rough.**" if budget_hit else "")
    paragraphs = [
        f"## Model families: prefill latency of FasterVLM at each family's geometry (`{command}`)",
        "Random-init models with the real models' visual geometry and the efficiency benchmark's widths, so "
        "the figures compare with the section above: every LLM is Llama/Qwen2-style, "
        f"{llm['hidden_size']} wide, {llm['num_hidden_layers']} layers, {llm['num_attention_heads']} heads / "
        f"{llm['num_key_value_heads']} KV heads, MLP {llm['intermediate_size']} (Qwen2-VL's with M-RoPE sections "
        f"{s['config']['qwen_rope']}); the CLIP towers (LLaVA-NeXT, Video-LLaVA) are {clip['hidden_size']} wide with "
        f"{clip['num_hidden_layers']} layers, patch {clip['patch_size']}, features of layer -2; Qwen2-VL's vision "
        f"tower is {qv['embed_dim']} wide with {qv['depth']} blocks, patch 14, 2×2 merge, temporal patch 2. The "
        f"prompts carry \"{QUESTION}\" (images) or \"{VIDEO_QUESTION}\" (videos).",
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
        "`stats.kept_columns`, the original position ids of the kept columns passed as `position_ids` (on Qwen2-VL "
        "the 3-D M-RoPE ids of the unreduced prompt from the model's own `get_rope_index`, gathered; built "
        "independently of vtr's adapter), then the LLM: the floor for any pre-LLM reducer, so (b)/(c) is vtr's "
        "overhead (probe, scoring, splice);\n"
        "- vision features only: the feature function alone, which every variant pays, and its share of (a).",
        markdown_table(header, table, align="llrrrrrrrrrr"),
        f"Checks: (c)'s logits match (b)'s in every case (max |Δ| {diff:.1e}); the position ids (c) and (b) hand to "
        f"the LLM, read by a forward pre-hook on `model.model.language_model`, are equal: "
        f"{'yes' if positions else 'NO'}.",
        machine_line(result["machine"]),
    ]
    return "\n\n".join(paragraphs) + "\n"


#: one warm-up round per case: the untimed check has already run every variant once
TIMING = TimingDefaults(warmup=1, repeats=5, max_seconds=180.0, quick_warmup=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = timing_parser("benchmarks.families", __doc__, SECTION, TIMING, keeps=KEEPS)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="cases to run (default: all)")
    return parse_timing_args(p, argv, TIMING)


def main(argv: list[str] | None = None, log=print) -> dict:
    """Run the benchmark; writes the JSON and the markdown section and returns the result dict."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = QUICK if args.quick else FULL
    keeps = tuple(sorted(set(args.keeps), reverse=True))
    cases = []
    try:
        with torch.no_grad():
            for name in [c for c in CASES if c in args.cases]:
                cases.append(run_case(name, config, args, keeps, log))
        info = machine_info(dtype=cases[0]["dtype"], attention=cases[0]["attention"])
    finally:
        torch.set_num_threads(threads)
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
