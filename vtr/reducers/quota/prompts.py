"""The user's question, read from the prompt, and new prompts written in the caller's own template.

A prompt that holds a video looks like ``head · <video placeholders> · tail``, where the tail holds
the question and the turn marker the model answers after, e.g.

- Video-LLaVA: ``"USER: " · <video>… · "\\nWhat happens? ASSISTANT:"``
- Qwen2-VL chat: ``"…<|im_start|>user\\n<|vision_start|>" · <|video_pad|>… ·
  "<|vision_end|>What happens?<|im_end|>\\n<|im_start|>assistant\\n"``

The question is the tail's text without special tokens and without a trailing assistant-turn marker
(``ASSISTANT:``, ``assistant``, ``### Assistant:``, ``GPT:``). QuoTA's own prompts (frame scoring,
query decoupling) are the caller's prompt with the question replaced by the new text, so they follow
whatever template the caller used, with no chat template needed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: an assistant-turn marker at the end of the tail's plain text
ASSISTANT_TURN = re.compile(r"(?:#+\s*)?\b(?:assistant|gpt)\s*:?\s*$", re.IGNORECASE)


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens, including added special tokens (media delimiters)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return ids | {int(i) for i, token in added.items() if getattr(token, "special", False)}


@dataclass
class PromptParts:
    """One prompt split around its video.

    Attributes:
        head: ``(N_h,)`` ids before the video's first placeholder.
        tail_text: the text after its last placeholder, special tokens written out.
        question: the question found in the tail (``""`` when there is none).
        span: ``(start, end)`` of the question in ``tail_text`` (an insertion point when it is empty).
    """

    head: torch.Tensor
    tail_text: str
    question: str
    span: tuple[int, int]

    def tail_with(self, text: str) -> str:
        """The tail with the question replaced by ``text`` (inserted, with a space after, when there was none)."""
        start, end = self.span
        rest = self.tail_text[end:]
        if start == end and rest and not rest[0].isspace():
            text += " "
        return self.tail_text[:start] + text + rest


def split_prompt(ids: torch.Tensor, token_id: int, tokenizer) -> PromptParts:
    """Split ``(N,)`` unpadded prompt ids around the placeholder run(s) of ``token_id``.

    With several videos in one prompt, the head ends before the first and the tail starts after the
    last (the question is the text after the last video).
    """
    where = (ids == token_id).nonzero()[:, 0]
    if where.numel() == 0:
        raise ValueError(f"the prompt holds no placeholder (id {token_id}) for its video")
    head, tail = ids[: int(where[0])], ids[int(where[-1]) + 1:]
    specials = special_ids(tokenizer)
    tail_list = tail.tolist()
    lead = next((i for i, t in enumerate(tail_list) if t not in specials), len(tail_list))  # media delimiters
    raw = tokenizer.decode(tail_list, skip_special_tokens=False)
    plain = tokenizer.decode(tail_list, skip_special_tokens=True).strip()
    question = ASSISTANT_TURN.sub("", plain).strip()
    opening = tokenizer.decode(tail_list[:lead], skip_special_tokens=False) if lead else ""
    insert = len(opening) if raw.startswith(opening) else 0
    insert += len(raw[insert:]) - len(raw[insert:].lstrip())
    start = raw.find(question, insert) if question else -1
    if start >= 0:
        span = (start, start + len(question))
    elif question:  # decoded differently with and without special tokens: replace all after the opening
        span = (insert, len(raw))
    else:
        span = (insert, insert)
    return PromptParts(head=head, tail_text=raw, question=question, span=span)


def encode(tokenizer, text: str, device) -> torch.Tensor:
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long, device=device)


def media_prompt(parts: PromptParts, token_id: int, n_tokens: int, text: str, tokenizer) -> torch.Tensor:
    """``(L,)`` ids: the caller's head, ``n_tokens`` placeholders of one view, the tail with ``text`` as question."""
    run = torch.full((n_tokens,), token_id, dtype=torch.long, device=parts.head.device)
    return torch.cat([parts.head, run, encode(tokenizer, parts.tail_with(text), parts.head.device)])


def text_prompt(parts: PromptParts, text: str, tokenizer) -> torch.Tensor:
    """``(L,)`` ids of a text-only prompt: the caller's template with no video and ``text`` as question.

    The media delimiters around the video (special tokens right before and after its placeholders,
    such as ``<|vision_start|>``/``<|vision_end|>``) go with it; the head's first token (BOS) stays.
    """
    specials = special_ids(tokenizer)
    head = parts.head.tolist()
    while len(head) > 1 and head[-1] in specials:
        head.pop()
    tail = tokenizer.encode(parts.tail_with(text), add_special_tokens=False)
    while tail and tail[0] in specials:
        tail.pop(0)
    return torch.tensor(head + tail, dtype=torch.long, device=parts.head.device)
