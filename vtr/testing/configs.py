"""Sizes shared by the tiny models: a 4-layer, 64-wide LLM and a 4-layer, 64-wide CLIP tower."""
from __future__ import annotations

from typing import Any


def tiny_text_settings(tokenizer, overrides: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Text-config settings of a tiny LLM for ``tokenizer``; pops ``overrides["text"]`` into them."""
    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, **extra)
    settings.update(overrides.pop("text", {}))
    return settings


def tiny_clip_settings(image_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """CLIP vision-config settings (patch 14); pops ``overrides["vision"]`` into them."""
    settings = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    image_size=image_size, patch_size=14, projection_dim=64)
    settings.update(overrides.pop("vision", {}))
    return settings
