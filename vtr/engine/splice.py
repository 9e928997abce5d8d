"""Shrinking the placeholder runs of a prompt to the kept visual tokens.

Processors expand ``<image>`` into one placeholder id per visual token. After a reducer keeps
``k`` of a view's ``n`` tokens, the prompt must carry ``k`` placeholders for that view; every
sequence-aligned tensor (ids, mask, labels, positions) is gathered with the same columns, so
the LLM sees a consistent, shorter prompt. Rows that end up with different lengths are re-padded
on the side the caller padded (left when unknown, as generation needs).
"""
from __future__ import annotations

import torch

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """A run of ``n_tokens`` placeholders (id ``token_id``) in batch row ``sample``: the tokens of one
    image or video as the model packs them. A segment holds one view (LLaVA-1.5) or several
    (AnyRes crops, video frames); adapters map per-view plans to per-segment token indices."""

    sample: int
    n_tokens: int
    token_id: int


def segment_columns(input_ids: torch.Tensor, segments: list[Segment]) -> list[torch.Tensor]:
    """Per segment, ``(n_tokens,)`` the columns of ``input_ids`` its placeholders occupy, in order.

    Segments are consumed in order: per row, the placeholders of each token id are matched with the
    segments of that token id, ``segment.n_tokens`` placeholders each.

    Args:
        input_ids: ``(B, N)`` prompt ids with full placeholder runs.
        segments: in batch order (row-major, then order of appearance).
    """
    token_ids = sorted({v.token_id for v in segments})
    queues = {t: [i for i, v in enumerate(segments) if v.token_id == t] for t in token_ids}
    columns: list[torch.Tensor | None] = [None] * len(segments)
    for row_index, row in enumerate(input_ids):
        for token_id in token_ids:
            positions = (row == token_id).nonzero().squeeze(1)
            offset = 0
            while offset < len(positions):
                if not queues[token_id]:
                    raise ValueError(
                        f"input_ids row {row_index} has more visual placeholders (id {token_id}) than the "
                        "visual inputs provide; build the prompt with the model's processor"
                    )
                segment_index = queues[token_id].pop(0)
                segment = segments[segment_index]
                if segment.sample != row_index or offset + segment.n_tokens > len(positions):
                    raise ValueError(
                        f"input_ids row {row_index}: placeholder count (id {token_id}) does not match the "
                        f"visual inputs ({segment.n_tokens} tokens per segment); build the prompt with the model's processor"
                    )
                columns[segment_index] = positions[offset:offset + segment.n_tokens]
                offset += segment.n_tokens
    leftover = sum(len(q) for q in queues.values())
    if leftover:
        raise ValueError(f"{leftover} visual input(s) have no placeholders in input_ids")
    return columns


def kept_columns(input_ids: torch.Tensor, segments: list[Segment], keep: list[torch.Tensor],
                 attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Columns of each row that survive the reduction: its text columns and each segment's kept placeholders
    (:func:`segment_columns`). The caller's padding columns (``attention_mask`` 0) are dropped too: rows are
    re-padded to the longest *reduced* row, so a batch whose rows shrink by different amounts (a text-only
    row next to image rows) is no wider than needed.

    Args:
        input_ids: ``(B, N)`` prompt ids with full placeholder runs.
        segments: in batch order (row-major, then order of appearance).
        keep: per segment, sorted ``(k_s,)`` indices into the segment's tokens.
        attention_mask: ``(B, N)``, or None (no padding).
    Returns:
        per row, sorted ``(N'_b,)`` int64 column indices into ``input_ids``.
    """
    placed = segment_columns(input_ids, segments)
    token_ids = torch.tensor(sorted({v.token_id for v in segments}), device=input_ids.device)
    columns = []
    for row_index, row in enumerate(input_ids):
        real = attention_mask[row_index].to(row.device).bool() if attention_mask is not None else torch.ones_like(row, dtype=torch.bool)
        parts = [(~torch.isin(row, token_ids) & real).nonzero().squeeze(1)]
        parts += [placed[i][keep[i].to(placed[i].device)] for i, v in enumerate(segments) if v.sample == row_index]
        columns.append(torch.cat(parts).sort().values)
    return columns


def padding_side(attention_mask: torch.Tensor | None) -> str:
    """``"right"`` when the caller right-padded, else ``"left"``."""
    if attention_mask is None or attention_mask.shape[1] == 0:
        return "left"
    right_padded = bool((attention_mask[:, -1] == 0).any()) and bool((attention_mask[:, 0] != 0).all())
    return "right" if right_padded else "left"


def gather_columns(x: torch.Tensor, columns: list[torch.Tensor], pad_value, side: str, batch_dim: int = 0) -> torch.Tensor:
    """Gather ``columns[b]`` along the last dim of each row ``b``; pad rows to the longest.

    Args:
        x: ``(B, N)`` or ``(..., B, N)`` with the batch at ``batch_dim``, sequence last.
        columns: per row, ``(N'_b,)`` indices.
    Returns:
        ``x`` with its last dim replaced by ``max_b N'_b``.
    """
    width = max(len(c) for c in columns)
    rows = []
    for b, cols in enumerate(columns):
        row = x.select(batch_dim, b).index_select(-1, cols.to(x.device))
        missing = width - len(cols)
        if missing:
            pad = row.new_full((*row.shape[:-1], missing), pad_value)
            row = torch.cat([pad, row] if side == "left" else [row, pad], dim=-1)
        rows.append(row)
    return torch.stack(rows, dim=batch_dim)


def read_as_packed(kwargs: dict, for_generate: bool) -> bool:
    """Whether transformers reads this call's ``position_ids`` as several packed sequences: a ``forward`` with no
    attention mask and no filled cache whose positions restart inside a row (:func:`packs_sequences`).
    ``generate`` always has a mask and a cache, so it never does."""
    cache = kwargs.get("past_key_values")
    cache = kwargs.get("cache") if cache is None else cache
    cached = cache is not None and hasattr(cache, "get_seq_length") and int(cache.get_seq_length()) > 0
    return (not for_generate and kwargs.get("attention_mask") is None and not cached
            and packs_sequences(kwargs.get("position_ids")))


def packs_sequences(position_ids: torch.Tensor | None) -> bool:
    """Whether ``position_ids`` (``(B, N)``, or ``(4, B, N)`` with text positions first) put several sequences in
    one row: transformers' rule for padding-free input, a position that is not its left neighbour's + 1."""
    if position_ids is None or position_ids.ndim not in (2, 3) or (position_ids.ndim == 3 and position_ids.shape[0] != 4):
        return False
    text = position_ids if position_ids.ndim == 2 else position_ids[0]
    return bool((text[:, 1:] - text[:, :-1] != 1).any())
