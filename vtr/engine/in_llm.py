"""Running a reducer's in-LLM stage around one call, and folding its outcome into the stats."""
from __future__ import annotations

import contextlib

import torch

from vtr.engine.decoder_pruning import DecoderPruning
from vtr.ops.flops import prefill_flops


_FRESH = object()


def llm_stage(handle, call: dict, resume=_FRESH):
    """A context that prunes inside the LLM for this call, or a no-op when the reducer has no such stage.

    ``call``: the kwargs the model will get (after any pre-LLM reduction). ``resume``: the engine state a
    cache returned by an earlier patched generate carries (a continuation decodes from it and prunes
    nothing new; ``None``: that call pruned nothing inside the LLM).
    """
    if resume is not _FRESH:
        if resume is None:
            return contextlib.nullcontext(None)
        engine = DecoderPruning(handle, resume.visual, None)
        engine.state = resume
        return engine
    reducer = handle.spec.reducer_class(handle.config)
    input_ids = call.get("input_ids")
    if input_ids is None or not reducer.llm_layers(handle.adapter.text_config.num_hidden_layers):
        return contextlib.nullcontext(None)
    placeholders = torch.tensor(handle.adapter.placeholder_ids(), device=input_ids.device)
    visual = torch.isin(input_ids, placeholders)
    if not bool(visual.any()):
        return contextlib.nullcontext(None)
    return DecoderPruning(handle, visual, call.get("attention_mask"))


def record_llm_stage(stats, engine: DecoderPruning | None, text_config) -> None:
    """Per-layer visual counts, the in-LLM stages, the final kept columns and FLOPs after."""
    if engine is None or engine.stats_state is None or not engine.stats_state.layers:
        return
    per_layer = engine.visual_counts_per_layer()  # (B, L)
    stats.visual_tokens_per_layer = per_layer.tolist()
    for k in engine.prune_layers:
        stats.stages[f"llm_layer_{k}"] = {"in": per_layer[:, k - 1].tolist(), "out": per_layer[:, k].tolist()}
    stats.visual_tokens_out = per_layer[:, -1].tolist()
    tokens = engine.tokens_per_layer()
    stats.prefill_flops_after = sum(prefill_flops(text_config, row) for row in tokens.tolist())
    for k in engine.prune_layers:
        cols, valid = (engine.prompt_part(t) for t in engine.stats_state.layers[k])
        stats.llm_columns[k] = [c.masked_fill(~v, -1).cpu() for c, v in zip(cols, valid)]
    final = engine.final_columns()
    if stats.kept_columns:  # compose with the pre-LLM columns: caller's prompt ← LLM input ← final rows
        valid = engine.prompt_part(engine.stats_state.valid).cpu()  # filler rows of ragged batches map to -1
        stats.kept_columns = [pre[c.cpu()].masked_fill(~v, -1) for pre, c, v in zip(stats.kept_columns, final, valid)]
        # (pre-LLM columns are padded to the LLM input's width, so LLM columns index them directly)


def loss_on_kept(model, logits: torch.Tensor, labels: torch.Tensor | None, engine: DecoderPruning,
                 shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The causal-LM loss of the rows the LLM kept, each row scored on its own next caller token.

    ``labels`` / ``shift_labels``: ``(B, N)`` of the LLM input (``shift_labels[:, c]`` is what row ``c``
    predicts; from ``labels`` it is ``labels[:, c + 1]``). They are gathered at the kept rows' columns, so
    a kept row predicts exactly what it predicts unpruned; filler rows of ragged batches get -100.
    """
    st = engine.stats_state
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    cols, valid = (engine.prompt_part(t) for t in (st.cols, st.valid))
    gathered = shift_labels.gather(1, cols.to(shift_labels.device)).masked_fill(~valid.to(shift_labels.device), -100)
    return model.loss_function(logits=logits, labels=None, shift_labels=gathered,
                               vocab_size=model.config.get_text_config().vocab_size)
