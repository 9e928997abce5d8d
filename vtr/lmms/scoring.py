"""Scoring on a reduced sequence, without lmms-eval: continuation log-probs read through
``model.vtr.stats.kept_columns``, stop strings, and per-sample reduction records.

A patched ``forward`` returns logits for the sequence the LLM saw, shorter than the caller's prompt.
Text tokens are never dropped, so every position that predicts a continuation token (the token before
it, always text) has a logits row; ``kept_columns[b][j]`` names the caller's column of row ``j``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vtr.ops.flops import prefill_flops


def rows_of_columns(kept_columns: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Logits rows of the caller's ``columns`` ``(n,)`` given one row's ``kept_columns`` ``(L',)``
    (-1 for filler entries). Raises ``RuntimeError`` if a column did not reach the LLM."""
    width = int(max(int(kept_columns.max()), int(columns.max()))) + 1
    inverse = torch.full((width,), -1, dtype=torch.long)
    valid = kept_columns >= 0
    inverse[kept_columns[valid]] = torch.nonzero(valid).flatten()
    rows = inverse[columns.cpu()]
    if bool((rows < 0).any()):
        missing = columns.cpu()[rows < 0].tolist()
        raise RuntimeError(f"prompt columns {missing} were dropped before the LM head; continuation log-probs "
                           "need the text positions (vtr never drops text tokens: this is a bug)")
    return rows


def continuation_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, kept_columns: Sequence[torch.Tensor],
                          n_continuation: Sequence[int]) -> list[tuple[torch.Tensor, bool]]:
    """Per row: the log-probs ``(n_b,)`` of its last ``n_b`` prompt tokens and whether greedy decoding
    would have produced all of them.

    Args:
        logits: ``(B, L', V)`` of the (possibly reduced) sequence.
        input_ids: ``(B, L)`` the caller's prompt (left-padded: the continuation ends every row).
        kept_columns: per row ``(L',)``, the caller column of each logits row (``arange(L)`` unpatched).
        n_continuation: per row, how many trailing tokens are the continuation.
    """
    out = []
    length = input_ids.shape[1]
    for b, n in enumerate(n_continuation):
        targets = torch.arange(length - n, length)
        rows = rows_of_columns(kept_columns[b], targets - 1).to(logits.device)
        logp = torch.log_softmax(logits[b, rows].float(), dim=-1)
        ids = input_ids[b, targets.to(input_ids.device)].to(logits.device)
        token_logp = logp.gather(-1, ids[:, None])[:, 0]
        out.append((token_logp.cpu(), bool((logp.argmax(-1) == ids).all())))
    return out


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lmms-eval's ``until``)."""
    end = len(text)
    for stop in until:
        if stop:
            found = text.find(stop)
            if found != -1:
                end = min(end, found)
    return text[:end]


@dataclass
class SampleRecord:
    """What the LLM processed for one request: visual tokens before and after reduction, its prefill
    FLOPs before and after (analytic, :mod:`vtr.ops.flops`), and the LLM input length."""

    visual_in: int
    visual_kept: int
    flops_before: float
    flops_after: float
    llm_input_tokens: int

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before if self.flops_before else 1.0


def sample_records(stats, text_config, lengths: Sequence[int]) -> list[SampleRecord]:
    """Per-sample records of a patched call from ``model.vtr.stats`` and the rows' unpadded prompt
    ``lengths``: layer ``l`` of row ``b`` processed ``length_b - visual_in_b + visual_tokens_per_layer[b][l]``
    tokens (text is never dropped), the count :mod:`vtr.engine` sums into ``prefill_flops_after``."""
    records = []
    for b, length in enumerate(lengths):
        visual_in = stats.visual_tokens_in[b]
        text = length - visual_in
        layers = stats.visual_tokens_per_layer[b]
        records.append(SampleRecord(
            visual_in=visual_in, visual_kept=stats.visual_tokens_out[b],
            flops_before=prefill_flops(text_config, [length] * len(layers)),
            flops_after=prefill_flops(text_config, [text + v for v in layers]),
            llm_input_tokens=text + layers[0]))
    return records


def unreduced_records(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, placeholder_ids: Sequence[int],
                      text_config) -> list[SampleRecord]:
    """Per-sample records of an unpatched call (``reducer=none``): every visual token is kept."""
    visual = torch.isin(input_ids, torch.tensor(list(placeholder_ids), device=input_ids.device))
    if attention_mask is not None:
        visual = visual & attention_mask.bool()
        lengths = attention_mask.sum(dim=1).tolist()
    else:
        lengths = [input_ids.shape[1]] * input_ids.shape[0]
    records = []
    for n_visual, length in zip(visual.sum(dim=1).tolist(), lengths):
        flops = prefill_flops(text_config, [length] * text_config.num_hidden_layers)
        records.append(SampleRecord(n_visual, n_visual, flops, flops, length))
    return records


def summarise(records: Sequence[SampleRecord]) -> dict:
    """Totals and means over requests: visual tokens in / kept, keep ratio, FLOPs ratio (total after /
    total before), mean LLM input length."""
    n = len(records)
    if not n:
        return {"requests": 0}
    visual_in = sum(r.visual_in for r in records)
    kept = sum(r.visual_kept for r in records)
    before = sum(r.flops_before for r in records)
    after = sum(r.flops_after for r in records)
    return {"requests": n, "visual_tokens_in": visual_in / n, "visual_tokens_kept": kept / n,
            "keep_ratio": kept / visual_in if visual_in else 1.0, "flops_ratio": after / before if before else 1.0,
            "llm_input_tokens": sum(r.llm_input_tokens for r in records) / n}
