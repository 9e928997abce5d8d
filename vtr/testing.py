"""Tiny, deterministic, offline models and inputs for tests, demos, notebooks and benchmarks.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on the spot (~50 ms),
the model is randomly initialised from a seed, and the processor is transformers' own class built
from explicit settings, so what is exercised is what users call.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from PIL import Image

FAMILIES = ("llava",)

_CORPUS = [
    "USER: what is in the image? ASSISTANT: a cat on a mat.",
    "describe the picture in detail please, what colour is the shape on the left",
    "the quick brown fox jumps over the lazy dog. how many objects are there",
    "hello world this is a tiny tokenizer for tests. is there a red circle above the square",
] * 20
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(specials: tuple[str, ...]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<pad>", "<s>", "</s>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok.to_str()


def build_tokenizer(image_token: str = "<image>", video_token: str = "<video>"):
    """A byte-level BPE tokenizer trained offline: ids <unk>0 <pad>1 <s>2 </s>3 <image>4 <video>5."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_json((image_token, video_token)))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": image_token, "video_token": video_token}, padding_side="left",
    )


def _llava(seed: int, overrides: dict[str, Any]):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = build_tokenizer()
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  image_size=336, patch_size=14, projection_dim=64)
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision.update(overrides.pop("vision", {}))
    text.update(overrides.pop("text", {}))
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


_BUILDERS = {"llava": _llava}


def tiny_model(family: str = "llava", seed: int = 0, **overrides: Any):
    """A tiny random-init model of ``family`` and its real processor, built offline in < 1 s.

    ``overrides`` update the top-level model config; ``vision={...}`` and ``text={...}`` update
    the vision and text sub-configs (e.g. ``text={"num_hidden_layers": 2}``).
    Returns ``(model, processor)``; the model is in eval mode, fp32, SDPA attention.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; available: {', '.join(_BUILDERS)}")
    return _BUILDERS[family](seed, dict(overrides))


PROMPTS = [
    "what is in the image?",
    "describe the picture in detail please",
    "is there a red circle above the square? how many objects are there",
    "what colour is the shape on the left",
]


def random_image(rng: np.random.Generator, min_side: int = 200, max_side: int = 480) -> Image.Image:
    """A random RGB image of random size: smooth blobs plus noise, so attention is not uniform."""
    h, w = (int(x) for x in rng.integers(min_side, max_side, size=2))
    coarse = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-30, 30, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def chat_prompt(question: str, image_token: str = "<image>") -> str:
    return f"USER: {image_token}\n{question} ASSISTANT:"


def example_inputs(processor, family: str = "llava", kind: str = "image", batch: int = 1, seed: int = 0):
    """Ready processor outputs: ``batch`` random images with prompts of different lengths.

    Rows are left-padded when ``batch > 1`` (as generation needs). Deterministic in ``seed``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; available: {', '.join(_BUILDERS)}")
    if kind != "image":
        raise ValueError(f"kind={kind!r} is not available for family {family!r}; allowed: 'image'")
    rng = np.random.default_rng(seed)
    images = [random_image(rng) for _ in range(batch)]
    texts = [chat_prompt(PROMPTS[(seed + i) % len(PROMPTS)]) for i in range(batch)]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)
