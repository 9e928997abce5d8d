"""The in-LLM engine: physically drop visual tokens after chosen decoder layers, at prefill.

Installed around one patched ``forward``/``generate`` call and removed after it, with forward
pre-hooks only (no model code is replaced):

- on the text model: records the 2-D attention mask and tells prefill from decode steps;
- on the attention of layer ``K-1`` for each prune layer ``K``: a :class:`DecoderQKProbe`;
- on every decoder layer ``i >= K_min``: rewrites the layer's inputs. At prefill, at a prune layer,
  the reducer picks visual tokens to keep (text is always kept) and the hidden states are gathered;
  at every later layer the RoPE cos/sin and position ids are gathered from the full-length ones the
  model computed, and the attention mask is rebuilt for the kept columns. Each layer's KV cache
  therefore holds only what it kept. At decode steps only the mask needs rebuilding, because the
  model sizes it for layer 0's (unpruned) cache.

Rows may keep different numbers of tokens (adaptive reducers, different image counts): shorter
rows are left-filled with masked filler entries, so one batched kernel call still serves all rows.
When no row needs filler and the model passed no mask (SDPA without padding), the mask stays
``None`` and the causal kernel path is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vtr.probes.decoder import DecoderQKProbe, LayerAttention, causal_allowed


@dataclass
class LayerContext:
    """What an in-LLM reducer sees when it selects before decoder layer ``layer``.

    Attributes:
        layer: the decoder layer about to run on the kept tokens; ``n_layers`` the depth.
        attention: exact attention of layer ``layer - 1`` (see :class:`LayerAttention`).
        visual: ``(B, n)`` bool, the current entries that are (valid) visual tokens.
        text: ``(B, n)`` bool, the current valid text tokens.
        n_visual_input: ``(B,)`` visual tokens each row had when entering the LLM.
        cols: ``(B, n)`` original column (in the LLM input) of each current entry.
        hidden: ``(B, n, D)`` the hidden states entering layer ``layer`` (before its input norm).
    """

    layer: int
    n_layers: int
    attention: LayerAttention
    visual: torch.Tensor
    text: torch.Tensor
    n_visual_input: torch.Tensor
    cols: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass
class _Prefill:
    n: int  # prefill length (columns of the LLM input)
    key_ok: torch.Tensor  # (B, n) 2-D attention mask of the input
    visual: torch.Tensor  # (B, n) visual placeholders of the input
    cols: torch.Tensor  # (B, n_cur) current original columns
    valid: torch.Tensor  # (B, n_cur) False for filler
    layers: dict = field(default_factory=dict)  # layer -> (cols, valid) after that layer's selection
    counts: dict = field(default_factory=dict)  # layer -> (B,) visual tokens processed
    selections: dict = field(default_factory=dict)  # prune layer -> (position (B, m), real (B, m)) chosen there
    prompt: int = 0  # columns of the planned prompt; later columns (assisted candidates, generated) are all kept


def pad_left(rows: list[torch.Tensor], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D index tensors, left-filling short rows; returns ``(index (B, m), real (B, m))``."""
    width = max(len(r) for r in rows)
    index = torch.stack([torch.cat([r.new_full((width - len(r),), fill if len(r) == 0 else int(r[0])), r]) for r in rows])
    real = torch.stack([torch.arange(width, device=index.device) >= width - len(r) for r in rows])
    return index, real


def st_key_ok(state: _Prefill, keys: torch.Tensor) -> torch.Tensor:
    """2-D attention mask of the input at ``keys`` (columns beyond the prompt are generated, real)."""
    inside = keys < state.n
    return torch.where(inside, state.key_ok.gather(1, keys.clamp(max=state.n - 1)), torch.ones_like(inside))


def attended_span(cache, index: int, queries: int, prefill: bool, default: int) -> tuple[int, int]:
    """``(width, offset)``: decoder layer ``index`` attends to ``width`` key slots in this step, slot ``s``
    holding sequence entry ``offset + s`` (``offset > 0`` once a sliding-window layer has rolled).

    ``default`` slots from 0 without a (new-style) cache; a static layer's whole buffer at its first
    prefill; else what the cache layer says for ``queries`` (as the model sizes its own mask)."""
    layers = getattr(cache, "layers", None) if cache is not None else None
    layer = layers[index] if layers is not None and index < len(layers) else None
    if layer is None:  # no cache (or a legacy one): the keys are this step's entries plus what was cached
        return default, 0
    if prefill and not getattr(layer, "is_initialized", True):
        return int(getattr(layer, "max_cache_len", default)), 0  # a static layer attends to its whole buffer
    width, offset = layer.get_mask_sizes(queries)
    return int(width), int(offset)


class DecoderPruning:
    """Context manager that prunes visual tokens inside the LLM for one call (see module doc)."""

    def __init__(self, handle, visual_input: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self.handle = handle
        self.reducer = handle.spec.reducer_class(handle.config)
        adapter = handle.adapter
        self.text_model = adapter.language_model
        self.layers = adapter.decoder_layers()
        n_layers = len(self.layers)
        self.prune_layers = sorted(set(self.reducer.llm_layers(n_layers)))
        if any(not 1 <= k < n_layers for k in self.prune_layers):
            raise ValueError(f"in-LLM prune layers must be in [1, {n_layers - 1}], got {self.prune_layers}")
        self.visual_input = visual_input  # (B, N) placeholders of the LLM input
        self.mask_2d = attention_mask
        self.eager = adapter.decoder_attention_implementation() == "eager"
        self.state: _Prefill | None = None
        self.first_state: _Prefill | None = None  # the first prefill's state while a no-cache re-run replays it
        self.group, self.prefill, self.replay = 1, True, False
        self.mask_width: int | None = None  # key columns of the model's own 4-D mask in this step
        self.probes = {k: DecoderQKProbe(adapter.decoder_attention(k - 1)) for k in self.prune_layers}
        self._handles: list = []

    # -- installation -----------------------------------------------------------------------------
    def __enter__(self) -> "DecoderPruning":
        self._handles.append(self.text_model.register_forward_pre_hook(self._on_text_model, with_kwargs=True))
        for k, probe in self.probes.items():
            probe.__enter__()
        for i in range(self.prune_layers[0], len(self.layers)):
            self._handles.append(self.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for probe in self.probes.values():
            probe.__exit__()

    def suspend(self) -> None:
        """Lift the hooks, keeping every state (a nested ``generate`` of the same model runs in between)."""
        self.__exit__()

    def resume(self) -> None:
        self.__enter__()

    # -- hooks ------------------------------------------------------------------------------------
    def _on_text_model(self, module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        x = embeds if embeds is not None else (args[0] if args else kwargs["input_ids"])
        b, n = x.shape[:2]
        cache = kwargs.get("cache")
        mask = kwargs.get("attention_mask")
        prefill = cache is None or cache.get_seq_length() == 0
        self.prefill, self.replay = prefill, False
        if not prefill:
            if self.state is None:
                raise RuntimeError("vtr in-LLM reducers need prefill and decoding in one generate() call, or a cache "
                                   "returned by a patched generate()")
            return
        first = self.state
        if first is not None and first.selections and cache is None and n >= first.n:
            # generate(use_cache=False) re-runs the whole sequence each step: replay the selection made at
            # the first prefill and keep every column added since, exactly what a cached decode attends to
            self.replay = True
        elif n < self.visual_input.shape[1]:
            raise RuntimeError("vtr: the LLM input is shorter than the prompt it was planned for")
        # n > planned: assisted decoding's first step appends candidate tokens; they are kept, and the
        # selection reads the prompt's columns only, as an unassisted prefill would
        if b % self.visual_input.shape[0]:
            raise RuntimeError(f"vtr: batch {b} is not a multiple of the planned batch {self.visual_input.shape[0]}")
        # generate expands rows for beams / num_return_sequences (repeat_interleave): ``group`` copies each
        self.group = b // self.visual_input.shape[0]
        visual = self.visual_input.repeat_interleave(self.group, dim=0).bool()
        visual = torch.cat([visual, visual.new_zeros(b, n - visual.shape[1])], dim=1)  # replay: added columns are text
        key_ok = mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else torch.ones(b, n, dtype=torch.bool)
        cols = torch.arange(n).expand(b, -1).to(visual.device)
        state = _Prefill(n, key_ok.to(cols.device), visual, cols, torch.ones_like(cols, dtype=torch.bool),
                         prompt=self.visual_input.shape[1])
        if self.replay:
            state.selections = first.selections
            self.first_state = self.first_state or first
        self.state = state

    def _layer_hook(self, i: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            mask = kwargs.get("attention_mask")
            self.mask_width = mask.shape[-1] if isinstance(mask, torch.Tensor) and mask.ndim == 4 else None
            if self.prefill:
                hidden = self._prefill_layer(i, hidden, kwargs)
            else:
                self._decode_layer(i, hidden, kwargs)
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    # -- prefill ----------------------------------------------------------------------------------
    def _prefill_layer(self, i: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        st = self.state
        if i in self.probes:
            position = self._replayed(i) if self.replay else self._select(i, hidden)  # (B, m) into the current sequence
            hidden = hidden.gather(1, position[..., None].expand(-1, -1, hidden.shape[-1]))
            self.probes[i].clear()
        cols, valid = st.cols, st.valid
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (self._gather_seq(cos, cols), self._gather_seq(sin, cols))
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = self._gather_positions(kwargs["position_ids"], cols)
        keys, key_valid = self._layer_keys(i, kwargs.get("cache"), cols, valid, hidden.shape[1])
        kwargs["attention_mask"] = self._layer_mask(
            kwargs.get("attention_mask"), cols, keys, key_valid, hidden.dtype, query_valid=valid)
        st.layers[i] = (cols, valid)
        st.counts[i] = (st.visual.gather(1, cols) & valid).sum(dim=1)
        return hidden

    def _replayed(self, layer: int) -> torch.Tensor:
        """Positions to keep before ``layer`` in a no-cache re-run: the first prefill's, plus every added column."""
        st = self.state
        chosen, real = st.selections[layer]
        added = st.n - self.first_state.n
        current = st.cols.shape[1]
        tail = torch.arange(current - added, current, device=chosen.device).expand(chosen.shape[0], -1)
        position = torch.cat([chosen, tail], dim=1)
        st.cols = st.cols.gather(1, position)
        st.valid = st.valid.gather(1, position) & torch.cat([real, torch.ones_like(tail, dtype=torch.bool)], dim=1)
        return position

    def _select(self, layer: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
        st = self.state
        added = st.n - self.visual_input.shape[1]  # columns after the planned prompt (all text, all kept)
        width = st.cols.shape[1] - added  # they are the last ``added`` entries of every row
        key_valid = (st.valid & st.key_ok.gather(1, st.cols))[:, :width]
        visual = (st.visual.gather(1, st.cols) & st.valid)[:, :width]
        attention = self.probes[layer].attention_of(st.cols, st.valid)
        if added:
            attention = LayerAttention(attention.q[:, :, :width], attention.k[:, :, :width], attention.scaling,
                                       st.cols[:, :width], key_valid)
        else:
            attention.key_valid = key_valid
        context = LayerContext(
            layer=layer, n_layers=len(self.layers), attention=attention,
            visual=visual, text=key_valid & ~visual, n_visual_input=st.visual.sum(dim=1), cols=st.cols[:, :width],
            hidden=None if hidden is None else hidden[:, :width],
        )
        chosen = self.reducer.llm_select(context)  # per row: positions of visual tokens to keep
        rows = []
        for b, keep_visual in enumerate(chosen):
            keep_visual = keep_visual.to(st.cols.device).long()
            if keep_visual.numel() and not bool(visual[b, keep_visual].all()):
                raise RuntimeError(f"reducer {self.handle.reducer!r} selected a non-visual position at layer {layer}")
            text = (st.valid[b, :width] & ~visual[b]).nonzero().squeeze(1)
            tail = torch.arange(width, width + added, device=text.device)
            rows.append(torch.cat([torch.cat([text, keep_visual]).sort().values, tail]))
        if self.group > 1:  # copies of one prompt (beams, num_return_sequences) share its first copy's selection
            rows = [rows[b - b % self.group] for b in range(len(rows))]
        position, real = pad_left(rows, fill=0)
        st.selections[layer] = (position, real)
        st.cols = st.cols.gather(1, position)
        st.valid = st.valid.gather(1, position) & real
        return position

    # -- decode -----------------------------------------------------------------------------------
    def _decode_layer(self, i: int, hidden: torch.Tensor, kwargs: dict) -> None:
        st = self.state
        cols, valid = st.layers[i]
        mask = kwargs.get("attention_mask")
        cache = kwargs["cache"]
        keys, key_valid = self._layer_keys(i, cache, cols, valid, hidden.shape[1])
        if mask is None and bool(key_valid.all()):
            return  # every cached entry is real and the kernel needs no mask
        b, q = hidden.shape[:2]
        kept = cols.shape[1] - (st.n - st.prompt)  # entries of the planned prompt this layer kept
        total = st.prompt + (int(cache.layers[i].get_seq_length()) - kept) + q  # layer-0 length after this step
        queries = torch.arange(total - q, total, device=cols.device).expand(b, -1)
        kwargs["attention_mask"] = self._layer_mask(mask, queries, keys, key_valid, hidden.dtype, gather_rows=False)

    def _layer_keys(self, i: int, cache, cols: torch.Tensor, valid: torch.Tensor, q: int):
        """Layer-0 column and validity of every key slot layer ``i`` attends to in this step.

        Layer ``i`` caches its ``m`` kept entries of the planned prompt (``N`` columns) in slots ``[0, m)`` and
        every later token right after them (assisted candidates, generated tokens, a continuation's new turn:
        never pruned, and only ever cropped from the end), so slot ``m + j`` holds layer-0 column ``N + j``. A dynamic cache attends to its filled slots
        plus the step's queries; a static cache to its whole buffer (slots past the model's mask are empty).

        Returns ``keys (B, K)`` and ``key_valid (B, K)``.
        """
        st, m = self.state, cols.shape[1]
        width = attended_span(cache, i, q, self.prefill, m if self.prefill else m + q)[0]
        m = m - (st.n - st.prompt)
        if width <= m:
            return cols[:, :width], valid[:, :width]
        cols, valid = cols[:, :m], valid[:, :m]
        later = torch.arange(st.prompt, st.prompt + width - m, device=cols.device).expand(cols.shape[0], -1)
        limit = self.mask_width if self.mask_width is not None else later.max() + 1
        keys = torch.cat([cols, later.clamp(max=limit - 1)], dim=1)
        key_valid = torch.cat([valid, later < limit], dim=1)
        return keys, key_valid

    # -- helpers ----------------------------------------------------------------------------------
    def _layer_mask(self, mask, rows, keys, key_valid, dtype, gather_rows: bool = True, query_valid=None):
        """The attention mask for kept entries.

        The model's own 4-D mask (sized for the unpruned layer-0 sequence) is gathered at the kept
        query rows and key columns, so padding keeps exactly the model's semantics; filler entries
        of ragged rows are then masked as keys (each filler query sees only itself). Without a
        model mask one is built from the causal rule only when filler needs masking.

        Args:
            mask: ``(B|1, 1, Q, K0)`` model mask or None; rows: ``(B, q)`` columns of the queries
                (the rows to take when ``gather_rows``); keys: ``(B, k)``; key_valid: ``(B, k)``;
                query_valid: ``(B, q)``, all True when None.
        """
        filler = ~key_valid
        if query_valid is None:
            query_valid = torch.ones_like(rows, dtype=torch.bool)
        if mask is None:
            if not bool(filler.any()):
                return None
            allowed = causal_allowed(rows, keys, key_valid & st_key_ok(self.state, keys))[:, None]
            if not self.eager:
                return allowed
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        b = keys.shape[0]
        mask = mask.expand(b, -1, -1, -1)
        if gather_rows:
            mask = mask.gather(2, rows[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))
        mask = mask.gather(3, keys[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1))
        if bool(filler.any()):
            # Filler keys are invisible to every query but filler queries of the same column (which
            # then see at least themselves); a filler is a copy of a real entry, so without this a
            # real token would see its own key twice.
            own_filler = (keys[:, None, :] == rows[:, :, None]) & ~query_valid[:, :, None]
            blocked = (filler[:, None, :] & ~own_filler)[:, None]
            mask = mask.masked_fill(blocked, False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min)
        return mask

    @staticmethod
    def _gather_seq(t: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``(B|1, N, d)`` → ``(B, n, d)`` at the given columns."""
        t = t.expand(cols.shape[0], -1, -1)
        return t.gather(1, cols[..., None].expand(-1, -1, t.shape[-1]))

    @staticmethod
    def _gather_positions(position_ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``(B|1, N)`` or ``(R, B|1, N)`` position ids at the given columns."""
        if position_ids.ndim == 2:
            return position_ids.expand(cols.shape[0], -1).gather(1, cols)
        p = position_ids.expand(position_ids.shape[0], cols.shape[0], -1)
        return p.gather(2, cols[None].expand(p.shape[0], -1, -1))

    def visual_counts_per_layer(self) -> torch.Tensor:
        """``(B, n_layers)`` visual tokens each decoder layer processed at prefill."""
        st = self.stats_state
        first = st.visual.sum(dim=1)
        counts, current = [], first
        for i in range(len(self.layers)):
            current = st.counts.get(i, current)
            counts.append(current)
        return torch.stack(counts, dim=1)

    def tokens_per_layer(self) -> torch.Tensor:
        """``(B, n_layers)`` real tokens (text + visual) each layer processed at prefill."""
        st = self.stats_state
        real = st.key_ok.sum(dim=1)
        out, current = [], real
        for i in range(len(self.layers)):
            if i in st.layers:
                cols, valid = st.layers[i]
                current = (valid & st.key_ok.gather(1, cols)).sum(dim=1)
            out.append(current)
        return torch.stack(out, dim=1)

    def final_columns(self) -> torch.Tensor | None:
        """``(B, m)`` LLM-input columns behind the prompt's output rows, ``None`` when nothing was pruned."""
        st = self.stats_state
        if st is None or not st.layers:
            return None
        return self.prompt_part(st.cols)

    def prompt_part(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, m, ...)`` of the stats state without the columns added after the planned prompt
        (assisted decoding's candidates, which every row keeps at its end)."""
        st = self.stats_state
        return x[:, :x.shape[1] - (st.n - self.visual_input.shape[1])]

    @property
    def stats_state(self) -> _Prefill | None:
        """The state of the call's first prefill (what the stats report)."""
        return self.first_state or self.state
