"""The path of one patched call: encode → plan → splice → stats.

``reduce_call`` turns the caller's kwargs (full placeholder runs, raw pixels) into the kwargs of a
reduced call (shorter prompt, pre-computed kept features) and records what it did.
"""
from __future__ import annotations

import time

import torch

from vtr.ops.flops import prefill_flops
from vtr.reducers.base import MergedView
from vtr.engine.proportional import caller_key_bias, check_implementation, reduced_key_bias, segment_token_weights
from vtr.engine.splice import padding_side, read_as_packed
from vtr.stats import ReductionStats, ViewRecord
from vtr.visual import ModelAccess


def apply_merge(visual, view_index: int, element, adapter=None) -> torch.Tensor:
    """A plan element's kept patch indices; merged features are written into the view's slots.

    Adapters build the reduced output from ``visual.features``, so a :class:`MergedView` only has
    to place its features at the kept patch rows of a copy of the view's features. A merged view
    with ``pre_projector`` holds features of the tower's space (``Signal.PRE_PROJECTOR_FEATURES``):
    ``adapter.project_features`` maps them first.
    """
    if not isinstance(element, MergedView):
        return element.to(torch.long)
    view = visual.views[view_index]
    index = element.index.to(torch.long)
    if element.features.shape[0] != index.numel():
        raise RuntimeError(f"a merged view has {element.features.shape[0]} features for {index.numel()} slots")
    merged = element.features
    if element.pre_projector:
        merged = adapter.project_features(merged)
    features = visual.features[view_index].clone()
    features[index + view.n_prefix] = merged.to(features.dtype)
    visual.features[view_index] = features
    return index


def model_access(handle) -> ModelAccess:
    """What a reducer may use of the model itself: its unpatched forward, its end ids, its path."""
    model = handle.model
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = () if eos is None else tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return ModelAccess(handle.original_forward, eos, getattr(model, "name_or_path", "") or "")


def check_positions(adapter, config) -> None:
    """The family must support the config's position mode (M-RoPE has no contiguous renumbering)."""
    if config.positions not in adapter.position_modes:
        raise ValueError(
            f"positions={config.positions!r} is not supported for {adapter.family!r} models; "
            f"allowed: {', '.join(adapter.position_modes)}"
        )


def check_signals(adapter, reducer) -> None:
    """The family must compute every signal the reducer (with its current config) reads, and support its
    in-LLM stage (``Adapter.in_llm_refusal``) when, with its current config, it has one."""
    if adapter.in_llm_refusal and reducer.llm_layers(adapter.text_config.num_hidden_layers):
        raise ValueError(
            f"reducer {reducer.name!r} drops visual tokens inside the LLM, which {adapter.family!r} models do not "
            f"support: {adapter.in_llm_refusal}; use a reducer that works before the LLM (e.g. fastervlm, pool)"
        )
    missing = reducer.signals_read() - adapter.provides
    if missing:
        raise ValueError(
            f"reducer {reducer.name!r} reads signal(s) {', '.join(sorted(s.value for s in missing))}, which "
            f"{adapter.family!r} models do not provide; {adapter.family!r} provides: "
            f"{', '.join(sorted(s.value for s in adapter.provides)) or 'none'}"
        )


def padded_columns(columns: list[torch.Tensor], side: str) -> list[torch.Tensor]:
    """Per-row kept columns padded to the longest row with -1, on the caller's padding side."""
    width = max(len(c) for c in columns)
    rows = []
    for c in columns:
        fill = torch.full((width - len(c),), -1, dtype=torch.long)
        rows.append(torch.cat([fill, c.cpu()] if side == "left" else [c.cpu(), fill]))
    return rows


def validate_plan(plan: list[torch.Tensor], visual, reducer_name: str) -> None:
    """A reducer must return, per view, sorted unique in-range patch indices."""
    if len(plan) != len(visual.views):
        raise RuntimeError(f"reducer {reducer_name!r} returned {len(plan)} plans for {len(visual.views)} views")
    for index, (kept, view) in enumerate(zip(plan, visual.views)):
        if kept.ndim != 1 or kept.numel() == 0:
            raise RuntimeError(f"reducer {reducer_name!r}: view {index} plan must be a non-empty 1-D index tensor")
        if kept.min() < 0 or kept.max() >= view.n_patches or (kept.numel() > 1 and (kept.diff() <= 0).any()):
            raise RuntimeError(f"reducer {reducer_name!r}: view {index} indices must be sorted, unique, in [0, {view.n_patches})")


def reduce_call(handle, kwargs: dict, for_generate: bool) -> dict:
    """Reduced kwargs for the original ``forward``/``generate``; sets ``handle.stats``.

    ``inputs_embeds`` with visual inputs: the placeholders are found where the embeddings equal the
    placeholder token's embedding (as the model itself finds them), and the embeddings are gathered
    with the kept columns like every sequence input, so the reduced call gets shorter ``inputs_embeds``.
    """
    adapter, config = handle.adapter, handle.config
    derived_ids = False
    if (kwargs.get("input_ids") is None and kwargs.get("inputs_embeds") is not None
            and any(kwargs.get(k) is not None for k in adapter.visual_inputs)):
        kwargs = {**kwargs, "input_ids": adapter.placeholder_ids_from_embeds(kwargs["inputs_embeds"])}
        derived_ids = True
        if kwargs.get("position_ids") is None:
            # the ids only locate the placeholders: positions stay those the model gives embeddings alone
            positions = adapter.embeds_position_ids(kwargs, for_generate)
            if positions is not None:
                kwargs["position_ids"] = positions
    adapter.check_inputs(kwargs)
    config.validate()
    check_positions(adapter, config)
    checked = handle.spec.reducer_class(config)
    check_signals(adapter, checked)
    if checked.llm_layers(adapter.text_config.num_hidden_layers) and read_as_packed(kwargs, for_generate):
        raise ValueError(
            f"position_ids pack several sequences into one row (padding-free input); reducer {handle.reducer!r} "
            "prunes inside the LLM by batch row, reading one attention pattern per row, so it cannot tell the "
            "sequences apart: pass them as a padded batch with an attention_mask, or use a pre-LLM reducer"
        )
    stats = ReductionStats(reducer=handle.reducer, description=handle.description)
    handle.stats = stats
    if not handle.spec.reducer_class.has_pre_llm_stage():
        record_llm_input(stats, adapter, kwargs)
        return kwargs  # the model encodes its visual inputs itself; the in-LLM stage prunes later
    start = time.perf_counter()
    adapter.requested_signals = frozenset(checked.vision_signals)  # an instance's: they may follow its config
    encoded = adapter.encode(kwargs)
    for e in encoded:
        adapter.add_shared_signals(e, kwargs)
    stats.seconds["vision"] = time.perf_counter() - start
    if not encoded:  # a text-only call: nothing to reduce; stats shaped as for every other reducer
        record_llm_input(stats, adapter, kwargs)
        return kwargs

    start = time.perf_counter()
    reducer = handle.spec.reducer_class(config)  # built per call: config edits apply from the next call
    token_keep, weighted = [], []
    for e in encoded:
        if e.visual.view_inputs is not None:
            e.visual.model = model_access(handle)
        elements = reducer.plan(e.visual)
        sizes = [p.sizes if isinstance(p, MergedView) else None for p in elements]
        plan = [apply_merge(e.visual, v, p, adapter) for v, p in enumerate(elements)]
        validate_plan(plan, e.visual, handle.reducer)
        keep = adapter.segment_keep(e, plan)
        token_keep.append(keep)
        if any(s is not None for s in sizes):  # merged tokens weigh their patch counts (proportional attention)
            check_implementation(adapter)
            weighted.append((e, keep, segment_token_weights(adapter, e, plan, sizes, keep)))
        stats.notes += [n for n in e.visual.notes if n not in stats.notes]
        stats.views += [ViewRecord(v.sample, v.grid, p.cpu()) for p, v in zip(plan, e.visual.views)]
        stats.records.update(e.visual.records)
        for key, seconds in e.visual.seconds.items():
            stats.seconds[key] = stats.seconds.get(key, 0.0) + seconds
    stats.seconds["select"] = time.perf_counter() - start

    new_kwargs, columns = adapter.splice(kwargs, encoded, token_keep, config.positions, for_generate)
    record_counts(stats, adapter, kwargs, encoded, token_keep)
    # Aligned with the reduced prompt's rows: re-padding entries are -1.
    stats.kept_columns = padded_columns(columns, padding_side(kwargs.get("attention_mask")))
    if weighted:
        stats.key_bias = reduced_key_bias(caller_key_bias(kwargs["input_ids"], weighted), stats.kept_columns)
    if derived_ids:  # the model gets the caller's (gathered) embeddings, as called
        new_kwargs.pop("input_ids")
    return new_kwargs


def record_llm_input(stats: ReductionStats, adapter, kwargs) -> None:
    """Stats of a call whose visual tokens all enter the LLM (no pre-LLM stage)."""
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        return
    visual = torch.isin(input_ids, torch.tensor(adapter.placeholder_ids(), device=input_ids.device))
    counts = visual.sum(dim=1).tolist()
    stats.visual_tokens_in, stats.visual_tokens_out = list(counts), list(counts)
    text_config = adapter.text_config
    stats.visual_tokens_per_layer = [[n] * text_config.num_hidden_layers for n in counts]
    mask = kwargs.get("attention_mask")
    # a custom 4-D mask (B, 1, N, N) has no per-row length: count every column
    lengths = mask.sum(dim=1).tolist() if mask is not None and mask.ndim == 2 else [input_ids.shape[1]] * input_ids.shape[0]
    stats.prefill_flops_before = sum(prefill_flops(text_config, [n] * text_config.num_hidden_layers) for n in lengths)
    stats.prefill_flops_after = stats.prefill_flops_before
    stats.kept_columns = [torch.arange(input_ids.shape[1])] * input_ids.shape[0]


def record_counts(stats: ReductionStats, adapter, kwargs, encoded, token_keep) -> None:
    """Per-sample visual token counts and the analytic prefill FLOPs before and after."""
    batch = kwargs["input_ids"].shape[0]
    tokens_in, tokens_out = [0] * batch, [0] * batch
    for e, keep in zip(encoded, token_keep):
        for segment, kept in zip(e.segments, keep):
            tokens_in[segment.sample] += segment.n_tokens
            tokens_out[segment.sample] += len(kept)
    stats.visual_tokens_in, stats.visual_tokens_out = tokens_in, tokens_out
    stats.stages["pre_llm"] = {"in": list(tokens_in), "out": list(tokens_out)}
    text_config = adapter.text_config
    n_layers = text_config.num_hidden_layers
    stats.visual_tokens_per_layer = [[n] * n_layers for n in tokens_out]
    mask = kwargs.get("attention_mask")
    lengths_in = mask.sum(dim=1).tolist() if mask is not None and mask.ndim == 2 else [kwargs["input_ids"].shape[1]] * batch
    for b in range(batch):
        length_out = lengths_in[b] - (tokens_in[b] - tokens_out[b])
        stats.prefill_flops_before += prefill_flops(text_config, [lengths_in[b]] * n_layers)
        stats.prefill_flops_after += prefill_flops(text_config, [length_out] * n_layers)
