"""Running the patched model's own LLM from inside a reduction, without reducing again.

A reducer's ``plan`` runs inside the patched ``forward``/``generate``. Calling ``model(...)`` or
``model.generate(...)`` from there would enter the vtr wrappers again (a second reduction, and the
handle's ``stats`` of the outer call replaced). Instead these functions take
``visual.model.forward`` (:class:`~vtr.visual.ModelAccess`): the model's forward as it was before
patching (accelerate hooks and all). Text generation is a short greedy loop over that forward with a
KV cache, not ``generate`` (which calls the wrapped forward).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def option_probability(forward, input_ids: torch.Tensor, extra: dict, option_ids: list[int]) -> torch.Tensor:
    """P(next token ∈ ``option_ids``) after each row of ``(n, L)`` ``input_ids``: one forward pass, no generation.

    Rows must have equal, unpadded lengths (a full attention mask). Only the last position's logits
    are computed (``logits_to_keep=1``). Returns ``(n,)`` float32.
    """
    out = forward(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                  logits_to_keep=1, **extra)
    probs = out.logits[:, -1].float().softmax(dim=-1)
    return probs[:, option_ids].sum(dim=-1)


@torch.no_grad()
def greedy_text(forward, input_ids: torch.Tensor, max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    """Greedy continuation of one ``(L,)`` text-only prompt (no padding), up to ``max_new_tokens`` or a stop id.

    Positions are passed explicitly (``0 … L-1``, then one more per step), so models that keep
    position state between calls (Qwen2-VL's ``rope_deltas``) neither use nor change it.
    """
    ids = input_ids[None]
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    cache, new = None, []
    for _ in range(max_new_tokens):
        out = forward(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache if "cache" in out else out.past_key_values
        token = int(out.logits[0, -1].argmax())
        if token in stop_ids:
            break
        new.append(token)
        ids = torch.tensor([[token]], device=ids.device)
        positions = positions[:, -1:] + 1
    return new
