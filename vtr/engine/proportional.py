"""Proportional attention: a merged visual token that stands for ``s`` patches is attended ``s`` times as much.

A merging reducer replaces ``s`` patches by one token. Softmax attention over the shorter sequence then
weighs that token like any single patch, so whatever the LLM reads from attention *mass* (how much of the
image is red, how many circles there are) shrinks with the merge. Adding ``log s`` to the token's attention
logit as a key, in every decoder layer and for every query, gives it exactly the mass ``s`` identical
patches would get: ``exp(q·k + log s) = s · exp(q·k)`` (Bolya et al., "Token Merging: Your ViT but
Faster", ICLR 2023, §3, used there inside the vision transformer; here inside the LLM).

A reducer asks for it by giving a :class:`~vtr.reducers.base.MergedView` its ``sizes``. The engine turns
them into ``key_bias``, ``(B, L)`` per column of the LLM input (``log s`` on merged visual tokens, 0
everywhere else), and :class:`ProportionalAttention` adds it to the attention mask every decoder layer
receives, in the prefill and in every decode step (a cache slot keeps its column's bias).
"""
from __future__ import annotations

import contextlib

import torch

from vtr.engine.decoder_pruning import attended_span
from vtr.engine.splice import segment_columns

#: attention implementations that take an additive float mask (the bias rides on it)
BIAS_IMPLEMENTATIONS = ("eager", "sdpa")


def segment_token_weights(adapter, encoded, plan: list[torch.Tensor], sizes: list[torch.Tensor | None],
                          keep: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per segment, ``(k_s,)`` the patch count of each kept token (1 for tokens that were not merged).

    Adapters map per-view plans to per-segment tokens (:meth:`Adapter.segment_keep`) without saying which
    token is which patch. Each view's patch-to-token map is increasing, so a view's kept tokens are the ones
    that disappear when that view's plan is emptied, in its patches' order. Views of different batch rows
    never share a segment, so one emptied view per row is found per round.

    Args:
        plan: per view, its sorted kept patch indices; sizes: per view, ``(k_v,)`` patch counts or None;
        keep: ``adapter.segment_keep(encoded, plan)``.
    """
    weights = [torch.ones(len(k)) for k in keep]
    pending: dict[int, list[int]] = {}
    for v, s in enumerate(sizes):
        if s is not None:
            pending.setdefault(encoded.visual.views[v].sample, []).append(v)
    while any(pending.values()):
        round_views = [views.pop(0) for views in pending.values() if views]
        emptied = [p[:0] if v in round_views else p for v, p in enumerate(plan)]
        without = adapter.segment_keep(encoded, emptied)
        for s, (full, rest) in enumerate(zip(keep, without)):
            gone = ~torch.isin(full, rest.to(full.device))
            if not bool(gone.any()):
                continue
            owner = [v for v in round_views if encoded.visual.views[v].sample == encoded.segments[s].sample]
            if len(owner) != 1 or int(gone.sum()) != len(plan[owner[0]]):
                raise RuntimeError("vtr: could not place a merged view's tokens in its segment")
            weights[s][gone.cpu()] = sizes[owner[0]].float().cpu()
    return weights


def caller_key_bias(input_ids: torch.Tensor, encoded_weights: list[tuple]) -> torch.Tensor:
    """``(B, N)`` ``log s`` at each merged placeholder column of the caller's prompt, 0 elsewhere.

    Args:
        input_ids: ``(B, N)`` the caller's prompt (full placeholder runs).
        encoded_weights: per encoded modality with merged views, ``(encoded, keep, weights)``: per segment
            its kept token indices and their patch counts (:func:`segment_token_weights`).
    """
    bias = torch.zeros(input_ids.shape, dtype=torch.float32)
    for encoded, keep, weights in encoded_weights:
        for segment, columns, kept, w in zip(encoded.segments, segment_columns(input_ids, encoded.segments),
                                             keep, weights):
            bias[segment.sample, columns.cpu()[kept.cpu()]] = w.log()
    return bias


def reduced_key_bias(caller_bias: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """``(B, L')`` the bias of each column of the reduced prompt (``columns``: per row, caller column or -1)."""
    out = torch.zeros(len(columns), max(len(c) for c in columns))
    for b, c in enumerate(columns):
        c = c.cpu()
        real = c >= 0
        out[b, :len(c)][real] = caller_bias[b, c[real]]
    return out


def attention_stage(adapter, key_bias: torch.Tensor | None):
    """:class:`ProportionalAttention` for a call with merged tokens, else a no-op context."""
    return contextlib.nullcontext(None) if key_bias is None else ProportionalAttention(adapter, key_bias)


def check_implementation(adapter) -> None:
    """Refuse attention implementations that cannot take the bias (before anything runs)."""
    implementation = adapter.decoder_attention_implementation()
    if implementation not in BIAS_IMPLEMENTATIONS:
        raise ValueError(
            f"proportional attention adds a bias to the LLM's attention logits, which attn_implementation "
            f"{implementation!r} cannot take; load the model with attn_implementation='sdpa' or 'eager', or "
            "patch with proportional=False"
        )


def biased_mask(mask, bias: torch.Tensor, batch: int, queries: int, keys: int, past: int,
                dtype: torch.dtype, offset: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The layer's attention mask as an additive float mask ``(batch, 1, queries, keys)`` plus the key bias.

    Args:
        mask: the model's mask for this layer: ``None`` (causal, nothing masked), a bool (True = attend) or
            an additive float ``(B|1, 1, queries, keys)`` mask.
        bias: ``(B0, L)`` per LLM-input column; rows are repeated when generate expanded the batch
            (beams, ``num_return_sequences``); key slots past ``L`` (generated tokens, an empty static
            buffer) get none.
        past: cached entries before this step's queries (placing the causal rule when ``mask`` is None).
        offset: key slot ``s`` holds sequence entry ``offset + s`` (a rolled sliding-window cache).
        device: where the hidden states are (the causal mask built when ``mask`` is None goes there).
    """
    if mask is None:
        rows = torch.arange(past, past + queries, device=device)[:, None]
        allowed = torch.arange(offset, offset + keys, device=device)[None, :] <= rows
        mask = allowed[None, None].expand(batch, 1, -1, -1)
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    if bias.shape[0] != batch:
        bias = bias.repeat_interleave(batch // bias.shape[0], dim=0)
    width = max(0, min(keys, bias.shape[1] - offset))
    full = torch.zeros(batch, keys, dtype=dtype, device=mask.device)
    full[:, :width] = bias[:, offset:offset + width].to(device=mask.device, dtype=dtype)
    return mask.expand(batch, -1, -1, -1) + full[:, None, None, :]


class ProportionalAttention:
    """Context manager: adds ``key_bias`` to every decoder layer's attention mask for one call.

    The model builds one mask per step (per layer type) for the whole sequence and hands it to every layer;
    the biased copy is built once per step from that mask and the step's layer-0 shape, recorded by a hook
    on the decoder stack, so it does not depend on what an in-LLM stage later does to a layer's hidden
    states. Its hooks run before any other pre-hook (an in-LLM stage then gathers the biased mask at the
    entries it keeps), and :meth:`suspend` / :meth:`resume` lift and restore them around a nested call.
    """

    def __init__(self, adapter, key_bias: torch.Tensor) -> None:
        check_implementation(adapter)
        self.text_model = adapter.language_model
        self.layers = adapter.decoder_layers()
        self.bias = key_bias  # (B0, L)
        self._handles: list = []
        self._step: tuple[int, int, int] = (0, 0, 0)  # this step's batch, queries and cached entries
        self._biased: dict[tuple, torch.Tensor] = {}  # (id of the model's mask or None, key slots) -> biased mask

    def __enter__(self) -> "ProportionalAttention":
        self._handles.append(self.text_model.register_forward_pre_hook(self._on_step, with_kwargs=True, prepend=True))
        for layer in self.layers:
            self._handles.append(layer.register_forward_pre_hook(self._on_layer, with_kwargs=True, prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    suspend = __exit__

    def resume(self) -> None:
        self.__enter__()

    def _on_step(self, module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        x = embeds if embeds is not None else (args[0] if args else kwargs["input_ids"])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._step = (x.shape[0], x.shape[1], int(cache.get_seq_length()) if cache is not None else 0)
        self._biased = {}

    def _on_layer(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        batch, queries, past = self._step
        index = getattr(getattr(module, "self_attn", None), "layer_idx", None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        # the slots this layer's cache attends to, and the first one's column (a rolled sliding window)
        keys, offset = (past + queries, 0) if index is None else attended_span(cache, index, queries, past == 0,
                                                                                  past + queries)
        if isinstance(mask, torch.Tensor):
            if mask.ndim != 4:
                raise RuntimeError(f"proportional attention needs a 4-D attention mask, got {tuple(mask.shape)}")
            queries, keys = mask.shape[-2:]
        key = (None if mask is None else id(mask), keys, offset)
        if key not in self._biased:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._biased[key] = biased_mask(mask, self.bias, batch, queries, keys, past, hidden.dtype, offset,
                                            hidden.device)
        kwargs["attention_mask"] = self._biased[key]
        return args, kwargs
