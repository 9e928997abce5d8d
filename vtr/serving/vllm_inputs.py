"""The forms vLLM takes reduced embeddings in: offline ``LLM.generate`` prompts, OpenAI-API content
parts, and engine calls that never mix row counts.

vLLM itself is never imported here (it lives in its own environment, see ``make test-vllm``); these
are plain dicts and tensors. The engine must be started with embeddings input switched on:
``LLM(model, enable_mm_embeds=True, limit_mm_per_prompt={"image": 0})`` offline, or
``vllm serve MODEL --enable-mm-embeds --limit-mm-per-prompt '{"image": 0}'`` for the server.
"""
from __future__ import annotations

import base64
import io
from collections import defaultdict

import torch

from vtr.serving.export import ReducedPrompt


def image_embeds(prompt: ReducedPrompt, dtype: torch.dtype | None = None):
    """``multi_modal_data["image"]``: ``(n_images, N_keep, hidden)`` when every image kept the same count,
    else a list of ``(N_keep_i, hidden)`` tensors (vLLM counts each item's rows)."""
    embeds = [e if dtype is None else e.to(dtype) for e in prompt.image_embeds]
    if len(set(prompt.rows)) == 1:
        return torch.stack(embeds)
    return embeds


def offline_prompt(prompt: ReducedPrompt, dtype: torch.dtype | None = None) -> dict:
    """One prompt for ``LLM.generate``: ``{"prompt_token_ids": [...], "multi_modal_data": {"image": ...}}``.

    The ids carry ONE placeholder per image (:meth:`ReducedPrompt.single_placeholder_ids`): vLLM replaces
    each by as many placeholders as the image has rows, so the engine's prompt is ``prompt.prompt_token_ids``.
    (Ids already expanded would be expanded again: vLLM 0.32 replaces the first placeholder of each run
    and leaves the rest as text tokens, without an error.) ``dtype``: cast the embeddings (e.g. to the
    served dtype).
    """
    return {"prompt_token_ids": prompt.single_placeholder_ids(), "multi_modal_data": {"image": image_embeds(prompt, dtype)}}


def tensor_to_base64(tensor: torch.Tensor) -> str:
    """A tensor as vLLM's server reads ``image_embeds`` content: ``torch.save`` bytes, base64 (read back with
    ``torch.load(..., weights_only=True)``)."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def tensor_from_base64(data: str) -> torch.Tensor:
    """The inverse of :func:`tensor_to_base64` (what the server does on its side)."""
    return torch.load(io.BytesIO(base64.b64decode(data)), weights_only=True)


def openai_content(prompt: ReducedPrompt, text: str, dtype: torch.dtype | None = None) -> list[dict]:
    """The ``content`` of a chat message for vLLM's OpenAI-compatible server: one ``image_embeds`` part per
    image (base64 ``(N_keep_i, hidden)``), then the text. The server's chat template places the images;
    vLLM expands each to ``N_keep_i`` placeholders from the rows it receives."""
    parts = [{"type": "image_embeds", "image_embeds": tensor_to_base64(e if dtype is None else e.to(dtype))}
             for e in prompt.image_embeds]
    return parts + [{"type": "text", "text": text}]


def group_by_rows(prompts: list[ReducedPrompt]) -> list[list[int]]:
    """Indices of ``prompts`` grouped so that one engine call never mixes images of different row counts
    (vLLM stops with "data contains inconsistent shapes" when one batch does).

    Prompts whose images all kept ``n`` rows go together, in input order; a prompt whose own images differ
    runs alone. An int ``keep`` (a count) makes every LLaVA-1.5 image the same size: one group.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        counts = set(prompt.rows)
        key = (next(iter(counts)),) if len(counts) == 1 else ("alone", index)
        groups[key].append(index)
    return list(groups.values())
