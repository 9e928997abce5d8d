"""Multi-turn: continuing a patched ``generate`` from the cache it returned.

``generate`` hands the caller its full prompt back, but the cache holds the reduced sequence: fewer
slots than the caller's columns. A cache filled by a patched ``generate`` therefore carries a
:class:`CacheMap` (attribute ``_vtr_map``) saying, slot by slot, which caller column it holds and at
which position. When ``sequences`` (plus new tokens, optionally new media) and that cache come back,
:func:`continue_call` rebuilds the reduced call: the cached slots' ids, the caller's new columns
(their visual inputs reduced like a first turn), their positions continuing from the last cached
slot's, and, for in-LLM reducers, the per-layer state that says which entries each decoder layer
kept. Nothing the caller passes is re-encoded: cached columns must equal the ones the cache was
built from, or the call is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vtr.adapters.base import SEQUENCE_INPUTS

MAP_ATTRIBUTE = "_vtr_map"


@dataclass
class CacheMap:
    """What a cache filled by a patched ``generate`` holds, in the caller's coordinates.

    Attributes:
        caller_ids: ``(B, C)`` the caller's columns the cache covers (prompt and generated tokens but the
            last one, which generate returns without feeding it back).
        columns: ``(B, S)`` caller column held in each layer-0 cache slot, ``-1`` for re-padding filler.
        positions: ``(B, S)`` or ``(R, B, S)`` position ids of the slots, as generate's ``position_ids``.
        engine: the in-LLM engine's state (which entries every decoder layer kept), or ``None``.
        reducer: the reducer that filled the cache.
        key_bias: ``(B, S)`` the proportional-attention bias of each slot (:mod:`vtr.engine.proportional`),
            or ``None`` when no slot has one.
    """

    caller_ids: torch.Tensor
    columns: torch.Tensor
    positions: torch.Tensor
    engine: object | None
    reducer: str
    key_bias: torch.Tensor | None = None


def cache_of(call: dict):
    cache = call.get("past_key_values")
    return cache if cache is not None else call.get("cache")


def map_of(cache) -> CacheMap | None:
    """The map of a cache filled by a patched ``generate``; ``None`` for an empty or foreign cache."""
    if cache is None or not hasattr(cache, "get_seq_length") or int(cache.get_seq_length()) == 0:
        return None
    return getattr(cache, MAP_ATTRIBUTE, None)


def generation_positions(model, call: dict) -> torch.Tensor:
    """The ``position_ids`` generate uses for ``call``: its own ones, or what generate builds itself."""
    if call.get("position_ids") is not None:
        return call["position_ids"]
    kwargs = {k: v for k, v in call.items() if k not in ("past_key_values", "cache", "position_ids")}
    return model._prepare_position_ids_for_generation(call["input_ids"], kwargs)


def tail_offsets(mask: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` 1-based offsets of new text columns from the last cached slot (padding does not count)."""
    if mask is None:
        return torch.arange(1, ids.shape[1] + 1, device=ids.device).expand(ids.shape[0], -1)
    return mask.long().cumsum(-1)


def continue_call(handle, call: dict, cmap: CacheMap, reduce) -> tuple[dict, torch.Tensor]:
    """The reduced call for a continuation, and per row the caller column of every slot it will hold.

    Args:
        call: the caller's generate kwargs: ``input_ids (B, L)`` with ``L > C`` starting with the cached
            ``caller_ids``, the cache, optionally ``attention_mask (B, L)`` and the new turn's visual inputs.
        reduce: ``reduce(kwargs) -> (reduced kwargs, columns (B, T') or None)`` for the new columns (the
            pre-LLM path; ``None``: passed on unchanged).
    Returns:
        ``(reduced kwargs, columns (B, S + T'))``.
    """
    ids, width = call["input_ids"], cmap.caller_ids.shape[1]
    if cmap.reducer != handle.reducer:
        raise ValueError(f"past_key_values was filled by a model patched with {cmap.reducer!r}; this model runs "
                         f"{handle.reducer!r}: continue with the same reducer or start a new conversation")
    if ids.shape[0] != cmap.caller_ids.shape[0] or ids.shape[1] <= width or not torch.equal(
            ids[:, :width].to(cmap.caller_ids.device), cmap.caller_ids):
        raise ValueError(
            f"input_ids must start with the {width} columns the past_key_values hold (the sequences the patched "
            f"generate returned, batch {cmap.caller_ids.shape[0]}) and add at least one new column; got shape "
            f"{tuple(ids.shape)}. Pass the returned sequences followed by the new turn's tokens"
        )
    if any(k.endswith("_embeds") and call.get(k) is not None for k in ("inputs_embeds",)):
        raise ValueError("continuing a patched generate from past_key_values takes input_ids, not inputs_embeds")
    mask = call.get("attention_mask")
    columns = cmap.columns.to(ids.device)
    filler = columns < 0
    slot_ids = ids.gather(1, columns.clamp(min=0)).masked_fill(filler, handle.adapter.pad_token_id)
    slot_mask = ~filler if mask is None else mask.gather(1, columns.clamp(min=0)).bool() & ~filler

    tail = {k: v[:, width:] for k, v in call.items() if k in SEQUENCE_INPUTS and isinstance(v, torch.Tensor)
            and v.ndim == 2 and v.shape[:2] == ids.shape[:2]}
    if "mm_token_type_ids" in call and "mm_token_type_ids" not in tail and call["mm_token_type_ids"] is not None:
        types = call["mm_token_type_ids"]
        tail["mm_token_type_ids"] = torch.nn.functional.pad(types, (0, max(0, ids.shape[1] - types.shape[1])))[:, width:]
    tail.update({k: call[k] for k in handle.adapter.visual_inputs if call.get(k) is not None})
    has_visual = any(k in tail for k in handle.adapter.visual_inputs)
    last = cmap.positions[..., -1:].to(ids.device)
    if has_visual:
        reduced_tail, tail_columns = reduce(tail)
        if tail_columns is None:
            tail_columns = torch.arange(ids.shape[1] - width, device=ids.device).expand(ids.shape[0], -1)
        local = generation_positions(handle.model, reduced_tail)  # positions of the new turn on its own
        tail_positions = last + 1 + local.to(last.dtype).expand(*last.shape[:-1], -1)
    else:
        reduced_tail = tail
        tail_columns = torch.arange(ids.shape[1] - width, device=ids.device).expand(ids.shape[0], -1)
        tail_positions = last + tail_offsets(tail.get("attention_mask"), tail["input_ids"]).to(last.dtype)
    tail_columns = tail_columns.to(ids.device)
    tail_columns = torch.where(tail_columns >= 0, tail_columns + width, tail_columns)

    new = {k: v for k, v in call.items() if k not in SEQUENCE_INPUTS and k not in handle.adapter.visual_inputs}
    new["input_ids"] = torch.cat([slot_ids, reduced_tail["input_ids"]], dim=1)
    tail_mask = reduced_tail.get("attention_mask")
    if mask is not None or tail_mask is not None or bool(filler.any()):
        tail_mask = torch.ones_like(reduced_tail["input_ids"]) if tail_mask is None else tail_mask
        new["attention_mask"] = torch.cat([slot_mask.to(tail_mask.dtype), tail_mask], dim=1)
    for key in ("token_type_ids", "mm_token_type_ids"):
        if call.get(key) is not None:
            # a caller may pass the first turn's types unextended: generated columns are text (0), as
            # generate itself extends them
            types = torch.nn.functional.pad(call[key], (0, max(0, ids.shape[1] - call[key].shape[1])))
            slots = types.gather(1, columns.clamp(min=0)).masked_fill(filler, 0)
            new[key] = torch.cat([slots, reduced_tail.get(key, types[:, width:])], dim=1)
    new["position_ids"] = torch.cat([cmap.positions.to(ids.device), tail_positions], dim=-1)
    if reduced_tail.get("mm_encoder_outputs"):
        new["mm_encoder_outputs"] = reduced_tail["mm_encoder_outputs"]
    return new, torch.cat([columns, tail_columns], dim=1)


def continued_key_bias(cmap: CacheMap, width: int, tail_bias: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, width)`` the bias of a continued call's columns: the cached slots' then the new turn's (its own
    merged media), zeros where neither has one; ``None`` when nothing is biased."""
    if cmap.key_bias is None and tail_bias is None:
        return None
    rows, slots = cmap.columns.shape
    out = torch.zeros(rows, width)
    if cmap.key_bias is not None:
        out[:, :slots] = cmap.key_bias[:, :slots].cpu()
    if tail_bias is not None:
        out[:, slots:slots + tail_bias.shape[1]] = tail_bias.cpu()
    return out


def record_map(handle, cache, caller_sequences: torch.Tensor, prompt_length: int, reduced_call: dict,
               columns: torch.Tensor | None, engine, key_bias: torch.Tensor | None = None) -> None:
    """Attach the :class:`CacheMap` of a finished patched ``generate`` to the cache it filled.

    Args:
        caller_sequences: ``(B, L + T)`` the sequences returned to the caller (caller's prompt first);
            ``prompt_length``: ``L``.
        reduced_call: the kwargs the model's generate ran with (input ``(B, L')``).
        columns: ``(B, L')`` caller column of each column of the reduced input (-1: filler); ``None`` when
            the model ran on the caller's own prompt.
    """
    if cache is None or not hasattr(cache, "get_seq_length"):
        return
    slots = int(cache.get_seq_length())
    reduced_ids = reduced_call["input_ids"]
    rows, length = reduced_ids.shape
    if slots < length or _cache_rows(cache) not in (None, rows) or caller_sequences.shape[0] != rows:
        return  # an expanded cache (beams) or a cache not filled from this prompt: nothing to continue from
    generated = slots - length
    device = reduced_ids.device
    if columns is None:
        columns = torch.arange(length, device=device).expand(rows, -1)
    caller_length = prompt_length
    gen_columns = torch.arange(caller_length, caller_length + generated, device=device).expand(rows, -1)
    positions = generation_positions(handle.model, reduced_call)
    if positions.shape[-1] != length:
        positions = positions[..., -length:]
    positions = positions.expand(*positions.shape[:-2], rows, -1)
    step = torch.arange(1, generated + 1, device=positions.device, dtype=positions.dtype)
    positions = torch.cat([positions, positions[..., -1:] + step], dim=-1)
    setattr(cache, MAP_ATTRIBUTE, CacheMap(
        caller_ids=caller_sequences[:, :caller_length + generated].to(device),
        columns=torch.cat([columns.to(device), gen_columns], dim=1),
        positions=positions,
        engine=getattr(engine, "state", None),
        reducer=handle.reducer,
        key_bias=None if key_bias is None else torch.nn.functional.pad(key_bias.cpu(), (0, generated)),
    ))
    mask = reduced_call.get("attention_mask")
    valid = torch.full((rows,), length, device=device) if mask is None or mask.ndim != 2 else mask.sum(dim=1)
    handle.adapter.continue_positions(positions[..., -1], valid + generated)


def _cache_rows(cache) -> int | None:
    for layer in getattr(cache, "layers", ()):
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.ndim == 4:
            return keys.shape[0]
    return None
