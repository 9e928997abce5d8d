"""Analytic prefill FLOPs of a decoder-only LLM (the part visual-token reduction shrinks).

Counted per layer for ``n`` tokens, 2 FLOPs per multiply-add:
- q and o projections: ``2 · 2 · n · d · (H·hd)``; k and v: ``2 · 2 · n · d · (KV·hd)``
- attention scores and weighted sum: ``2 · 2 · n² · (H·hd)`` (full square, as FastV and
  FasterVLM count it; a causal kernel does about half)
- gated MLP (three matrices): ``2 · 3 · n · d · m``
The vision tower and the LM head are not included: reduction does not change them.
"""
from __future__ import annotations

from typing import Sequence


def layer_flops(n_tokens: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int) -> float:
    n = float(n_tokens)
    attn_width, kv_width = heads * head_dim, kv_heads * head_dim
    projections = 2 * 2 * n * hidden * attn_width + 2 * 2 * n * hidden * kv_width
    scores = 2 * 2 * n * n * attn_width
    mlp = 2 * 3 * n * hidden * intermediate
    return projections + scores + mlp


def prefill_flops(text_config, tokens_per_layer: Sequence[int]) -> float:
    """FLOPs of one sample's prefill, given the tokens each decoder layer processes."""
    hidden = text_config.hidden_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    return sum(
        layer_flops(n, hidden, heads, kv_heads, head_dim, text_config.intermediate_size) for n in tokens_per_layer
    )
