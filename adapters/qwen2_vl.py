"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): images and videos, M-RoPE positions.

Module paths (transformers 5.24): vision tower ``model.model.visual`` (``patch_embed`` → ``blocks[i]``
with a fused ``attn.qkv`` and per-frame ``cu_seqlens`` attention → ``merger``, a 2×2 PatchMerger that
is also the projector). ``get_image_features(pixel_values, image_grid_thw)`` and
``get_video_features(pixel_values_videos, video_grid_thw)`` return ``pooler_output`` as a tuple of
``(t·h·w/4, D)`` merged features, one per image or video.

Layout:
- An image is one view with the merged grid ``(h/2, w/2)`` and one segment (its placeholder run).
- A video of ``t`` frame groups (frames after temporal patching) is one segment holding ``t`` views,
  one per frame group, each with the merged grid; ``keep`` applies per frame group.

Positions: Qwen2-VL numbers tokens with 3-D M-RoPE (t, h, w) computed by ``get_rope_index`` from the
full grids, so positions are computed on the unreduced prompt and the kept columns gathered; text
after a pruned image keeps its original positions. ``positions="renumber"`` has no meaning for grid
positions and is rejected with a ``ValueError``.

Signal substitute: the Qwen2-VL vision tower has no [CLS] token. ``"cls_attention"`` is served by the
*attention received* by each merged token in one vision block (``signal_block``, default the last):
the column mean of ``softmax(q·kᵀ·scale)`` over all query patches of the same image or frame group
(its ``cu_seqlens`` chunk), averaged over heads, then over each 2×2 merge window. It is recomputed
from the block's own q/k (after the vision RoPE), never with eager attention, and the use is noted
in ``VisualTokens.notes`` (hence ``stats.notes``/``stats.adapted``). The same values are also offered
under the honest name ``"received_attention"``. Choose the block per patched model with
``model.vtr.adapter.signal_block = k``.

Views are listed per modality (all images of the batch, then all videos), each in prompt order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vtr.adapters.base import Adapter, Encoded
from vtr.adapters.layout import describe_views, item_rows
from vtr.engine.splice import Segment, gather_columns, padding_side
from vtr.probes.vision import patch_attention_means
from vtr.signals import Signal
from vtr.visual import Signals, View, VisualTokens

#: (pixel key, grid key, feature function, config token id attribute) per modality
MODALITIES = {
    "image": ("pixel_values", "image_grid_thw", "get_image_features", "image_token_id"),
    "video": ("pixel_values_videos", "video_grid_thw", "get_video_features", "video_token_id"),
}

SUBSTITUTE_NOTE = (
    "cls_attention on qwen2_vl is the adapted received-attention substitute (no [CLS]): attention each merged "
    "token receives in vision block {block}, column mean over its image/frame group, head mean, 2x2 merge mean"
)

PATCH_ATTENTION_NOTE = (
    "patch_attention_*_means on qwen2_vl (FoPru's significance) is adapted: the patch-to-patch attention of vision "
    "block {block} (the last block feeds the PatchMerger projector) per image/frame group, head mean, then the "
    "mean over each 2x2 merge window; there is no [CLS] to exclude"
)


def present_modalities(kwargs: dict) -> list[str]:
    """The modalities whose pixels are in the call, in ``MODALITIES`` order (images before videos)."""
    return [modality for modality, (pixels, *_) in MODALITIES.items() if kwargs.get(pixels) is not None]


def packed_text_positions(text: torch.Tensor, columns: list[torch.Tensor], side: str) -> torch.Tensor:
    """Text positions of the kept ``columns`` (per row, as :func:`gather_columns` takes them) of ``(B, N)``
    caller positions ``text``, renumbered within each packed sequence: a sequence starts wherever a caller
    position is not its left neighbour's + 1 (transformers' rule for packed inputs) and keeps its first value;
    its kept columns then count up from there. ``(B, N')``; padding columns count up from 0."""
    index = torch.arange(text.shape[1], device=text.device).expand_as(text)
    starts = torch.ones_like(text, dtype=torch.bool)
    starts[:, 1:] = text[:, 1:] - text[:, :-1] != 1
    sequence = starts.long().cumsum(1)  # 1, 2, ... per packed sequence
    first = text.gather(1, torch.where(starts, index, 0).cummax(1).values)  # each column's sequence start value
    kept_sequence, kept_first = (gather_columns(t, columns, 0, side) for t in (sequence, first))
    kept_index = torch.arange(kept_sequence.shape[1], device=text.device).expand_as(kept_sequence)
    kept_starts = torch.ones_like(kept_sequence, dtype=torch.bool)
    kept_starts[:, 1:] = kept_sequence[:, 1:] != kept_sequence[:, :-1]
    rank = kept_index - torch.where(kept_starts, kept_index, 0).cummax(1).values
    return kept_first + rank


@dataclass
class PackedEncoded(Encoded):
    """:class:`Encoded` plus the model's own features per image/video (``(t·h·w/4, D)`` each), one per
    segment, from which :meth:`Qwen2VLAdapter.reduced_outputs` gathers the kept tokens."""

    items: list[torch.Tensor] = field(default_factory=list)
    view_features: list[torch.Tensor] = field(default_factory=list)  # per view, as encoded (before any merge)


class ReceivedAttentionProbe:
    """Captures what one ``VisionAttention`` module computes anyway: its fused ``qkv`` output
    ``(S, 3·H·d)``, its ``cu_seqlens`` ``(n_chunks + 1,)`` and its rotary ``(cos, sin)`` ``(S, d)``.

    Use as a context manager so the hooks are always removed.
    """

    def __init__(self, attention: torch.nn.Module) -> None:
        self.attention = attention
        self.qkv: torch.Tensor | None = None
        self.cu_seqlens: torch.Tensor | None = None
        self.position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles: list = []

    def _record_inputs(self, module, args, kwargs) -> None:
        # VisionBlock passes these by keyword; accept positions too, in forward's order.
        self.cu_seqlens = kwargs["cu_seqlens"] if "cu_seqlens" in kwargs else args[1]
        self.position_embeddings = kwargs.get("position_embeddings", args[2] if len(args) > 2 else None)

    def __enter__(self) -> "ReceivedAttentionProbe":
        self._handles = [
            self.attention.register_forward_pre_hook(self._record_inputs, with_kwargs=True),
            self.attention.qkv.register_forward_hook(lambda m, i, o: setattr(self, "qkv", o)),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def rotated_qk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's queries and keys ``(S, H, d)`` each, split from the fused ``qkv`` and rotated by the
        model's own vision RoPE (in the model's dtype)."""
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        if self.qkv is None or self.position_embeddings is None:
            raise RuntimeError("the probed vision attention block did not run; is signal_block a valid block index?")
        n = self.qkv.shape[0]
        q, k, _ = self.qkv.reshape(n, 3, self.attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        return apply_rotary_pos_emb_vision(q, k, *self.position_embeddings)

    def received_attention(self, merge: int, max_elements: int = 1 << 24) -> list[torch.Tensor]:
        """Attention received per merged token, one ``(n_chunk / merge²,)`` float32 tensor per chunk.

        Exact post-softmax values of the block's attention, computed per ``cu_seqlens`` chunk and in
        blocks of query rows of at most ``max_elements`` logits (64 MiB in float32) each.
        """
        heads, scale = self.attention.num_heads, self.attention.scaling
        q, k = self.rotated_qk()
        bounds = self.cu_seqlens.tolist()
        scores = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            qc = q[start:end].transpose(0, 1).float()  # (H, n_c, d)
            kc = k[start:end].transpose(0, 1).float()
            received = torch.zeros(end - start, dtype=torch.float32, device=q.device)
            rows = max(1, max_elements // (heads * (end - start)))
            for row in range(0, end - start, rows):
                # softmax is per query row, so summing row blocks gives the exact column sums
                probs = (qc[:, row:row + rows] @ kc.transpose(-1, -2) * scale).softmax(dim=-1)
                received += probs.sum(dim=(0, 1))
            received /= heads * (end - start)
            # patches come merge-window-major: each run of merge² patches is one merged token
            scores.append(received.view(-1, merge * merge).mean(dim=-1))
        return scores


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_classes = ("Qwen2VLForConditionalGeneration",)
    provides = frozenset({Signal.CLS_ATTENTION, Signal.RECEIVED_ATTENTION, Signal.PATCH_ATTENTION_LOGIT_MEANS,
                          Signal.PATCH_ATTENTION_PROB_MEANS, Signal.PROMPT_EMBEDDINGS})
    visual_inputs = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
    rejected_inputs = {
        "image_sizes": "Qwen2-VL takes image_grid_thw from its own processor, not image_sizes",
    }
    #: position modes this family supports (``"renumber"`` has no meaning for 3-D grid positions)
    position_modes = ("original",)
    #: vision block whose received attention substitutes for [CLS] attention (negative counts from the end)
    signal_block: int = -1
    #: visual inputs without ``mm_token_type_ids`` (and without ``position_ids``) are refused, as the unpatched
    #: model refuses them; a family whose model then numbers the columns as text sets this False
    needs_token_types: bool = True

    # -- inputs ---------------------------------------------------------------------------------
    def check_inputs(self, kwargs: dict) -> None:
        super().check_inputs(kwargs)
        present = present_modalities(kwargs)
        for modality in present:
            pixels, grid = MODALITIES[modality][:2]
            if kwargs.get(grid) is None:
                raise ValueError(
                    f"{pixels!r} needs {grid!r} (one (t, h, w) row per {modality}); pass the processor's output"
                )
        if not present:
            return
        types = kwargs.get("mm_token_type_ids")
        if types is None:
            if kwargs.get("position_ids") is not None or not self.needs_token_types:
                # The caller numbered every column (e.g. packed, padding-free sequences): the types only serve
                # to compute M-RoPE positions, so, as in the unpatched model, they are not needed.
                return
            raise ValueError(
                "Qwen2-VL needs 'mm_token_type_ids' alongside visual inputs to compute its M-RoPE positions "
                "(or explicit position_ids); pass the processor's mm_token_type_ids"
            )
        # get_rope_index walks the type runs while the features go where the placeholder ids are: both must agree
        ids, config = kwargs.get("input_ids"), self.model.config
        expected = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
        if types.shape != ids.shape or not torch.equal(types.to(expected.device).long(), expected):
            raise ValueError(
                "mm_token_type_ids must be 1 at image placeholders, 2 at video placeholders and 0 elsewhere, with "
                "the shape of input_ids; pass the processor's mm_token_type_ids"
            )

    # -- encode ---------------------------------------------------------------------------------
    def encode(self, kwargs: dict) -> list[Encoded]:
        encoded = [self.encode_modality(modality, kwargs) for modality in present_modalities(kwargs)]
        for e in encoded:
            self.describe_media(e, kwargs)
        return encoded

    def describe_media(self, encoded: Encoded, kwargs: dict) -> None:
        """Fill the optional :class:`~vtr.visual.VisualTokens` fields (item/frame of each view, prompt
        ids, single-view model inputs, pixels) that reducers asking the model about views need (QuoTA).
        A single view is shown to the LLM as a one-group video (video) or one image (image)."""
        visual, modality = encoded.visual, encoded.modality
        pixels_key, grid_key = MODALITIES[modality][:2]
        grids = kwargs[grid_key]
        describe_views(visual, modality, kwargs, [t if modality == "video" else 0 for t in grids[:, 0].tolist()],
                       functools.cache(lambda: self.first_frames(kwargs[pixels_key], grids)),
                       functools.partial(self.view_inputs, visual, modality))

    def view_inputs(self, visual: VisualTokens, modality: str, views: list[int], input_ids: torch.Tensor) -> dict:
        """``mm_encoder_outputs`` with the features of ``views`` (one per row of ``(n, L)`` ``input_ids``) and
        their M-RoPE positions ``(3, n, L)``, each view laid out as a ``(1, h, w)`` grid of its own."""
        merge = self.model.model.visual.spatial_merge_size
        grid = torch.tensor([[1, visual.views[v].grid[0] * merge, visual.views[v].grid[1] * merge] for v in views],
                            device=input_ids.device)
        types = (input_ids == visual.views[views[0]].token_id).long() * (2 if modality == "video" else 1)
        positions, _ = self.model.model.get_rope_index(input_ids, types, **{MODALITIES[modality][1]: grid})
        outputs = BaseModelOutputWithPooling(pooler_output=tuple(visual.features[v] for v in views))
        return {"mm_encoder_outputs": {modality: outputs}, "position_ids": positions}

    def first_frames(self, pixels: torch.Tensor, grids: torch.Tensor) -> list[torch.Tensor]:
        """Per frame group (or image), ``(3, H, W)``: its first frame, un-patchified from the processor's
        ``(Σ t·h·w, C·tp·p·p)`` rows (patches come merge-window-major, channels before time)."""
        vision = self.model.config.vision_config
        p, m, tp = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        frames, start = [], 0
        for t, h, w in grids.tolist():
            x = pixels[start:start + t * h * w].reshape(t, h // m, w // m, m, m, -1, tp, p, p)
            frames += list(x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, tp, -1, h * p, w * p)[:, 0])
            start += t * h * w
        return frames

    def encode_modality(self, modality: str, kwargs: dict) -> Encoded:
        """Run the model's own feature function with a received-attention probe on ``signal_block``."""
        pixels_key, grid_key, function_name, token_attr = MODALITIES[modality]
        base, token_id = self.model.model, getattr(self.model.config, token_attr)
        visual = base.visual
        merge = visual.spatial_merge_size
        grids = kwargs[grid_key]
        blocks = visual.blocks
        if not -len(blocks) <= self.signal_block < len(blocks):
            raise ValueError(
                f"signal_block={self.signal_block} is out of range for a vision tower of {len(blocks)} blocks; "
                f"allowed: {-len(blocks)} to {len(blocks) - 1}"
            )
        with ReceivedAttentionProbe(blocks[self.signal_block].attn) as probe:
            outputs = getattr(base, function_name)(kwargs[pixels_key], grids, return_dict=True)
        items = list(outputs.pooler_output)  # (t·h·w/merge², D) per image or video
        sizes = [f.shape[0] for f in items]
        samples = item_rows(kwargs["input_ids"], token_id, sizes, modality, f"the {modality} grids")
        features, views, segments = [], [], []
        for item, (t, h, w), sample in zip(items, grids.tolist(), samples):
            grid = (h // merge, w // merge)
            features += list(item.view(t, grid[0] * grid[1], -1).unbind(0))  # frame groups are t-major
            views += [View(sample=sample, grid=grid, n_prefix=0, token_id=token_id)] * t
            segments.append(Segment(sample, item.shape[0], token_id))
        received = functools.cache(lambda: self.substitute_signal(probe, merge, tokens))
        patch_means = {signal: functools.cache(
            lambda probs=probs: self.patch_attention_signal(probe, merge, tokens, probs))
            for probs, signal in ((False, Signal.PATCH_ATTENTION_LOGIT_MEANS), (True, Signal.PATCH_ATTENTION_PROB_MEANS))}
        signals = Signals(self.family, {Signal.CLS_ATTENTION: received, Signal.RECEIVED_ATTENTION: received, **patch_means})
        tokens = VisualTokens(features, views, signals)
        return PackedEncoded(modality, tokens, outputs, segments, items=items, view_features=list(features))

    def patch_attention_signal(self, probe, merge: int, tokens: VisualTokens, probs: bool) -> list[torch.Tensor]:
        """Per view ``(2, n_patches)``: column and row means of ``signal_block``'s patch-to-patch attention
        (logits or probabilities) over the view's chunk, each averaged over the merge windows; noted as adapted."""
        note = PATCH_ATTENTION_NOTE.format(block=self.signal_block)
        if note not in tokens.notes:
            tokens.notes.append(note)
        heads = probe.attention.num_heads
        q, k = probe.rotated_qk()
        bounds = probe.cu_seqlens.tolist()
        scores = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            chunk = [x[start:end].reshape(1, end - start, -1) for x in (q, k)]  # (1, n_c, H*d)
            means = patch_attention_means(*chunk, heads, probe.attention.scaling, probs=probs, n_prefix=0)[0]
            scores.append(means.view(2, -1, merge * merge).mean(dim=-1))  # merge windows are runs of merge² patches
        if [s.shape[-1] for s in scores] != [v.n_patches for v in tokens.views]:
            raise RuntimeError("vision attention chunks do not line up with the image/frame-group views")
        return scores

    def substitute_signal(self, probe: ReceivedAttentionProbe, merge: int, tokens: VisualTokens) -> list[torch.Tensor]:
        """Per view ``(n_patches,)`` received attention; notes the substitution where it is used."""
        note = SUBSTITUTE_NOTE.format(block=self.signal_block)
        if note not in tokens.notes:
            tokens.notes.append(note)
        scores = probe.received_attention(merge)
        if [s.numel() for s in scores] != [v.n_patches for v in tokens.views]:
            raise RuntimeError("vision attention chunks do not line up with the image/frame-group views")
        return scores

    # -- keep plans and features ----------------------------------------------------------------
    def segment_keep(self, encoded: Encoded, plan: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-view patch indices → per-segment token indices: frame group ``g`` of a video starts at
        ``g · n_per_group`` inside the video's run."""
        keep, view = [], 0
        for segment in encoded.segments:
            parts, offset = [], 0
            while offset < segment.n_tokens:
                parts.append(plan[view] + offset)
                offset += encoded.visual.views[view].n_tokens
                view += 1
            keep.append(torch.cat(parts))
        return keep

    def reduced_outputs(self, encoded: Encoded, keep: list[torch.Tensor]):
        outputs = encoded.outputs
        items, view = list(encoded.items), 0
        for s, segment in enumerate(encoded.segments):
            first, offset = view, 0
            while offset < segment.n_tokens:
                offset += encoded.visual.views[view].n_tokens
                view += 1
            features, original = encoded.visual.features[first:view], encoded.view_features[first:view]
            if original and any(f is not o for f, o in zip(features, original)):
                items[s] = torch.cat(features).to(items[s].dtype)  # a merging reducer (MergedView) replaced features
        kept = tuple(f.index_select(0, k.to(f.device)) for f, k in zip(items, keep))
        return type(outputs)(**{**dict(outputs.items()), "pooler_output": kept})

    # -- positions ------------------------------------------------------------------------------
    def splice(self, kwargs, encoded, keep, positions, for_generate):
        new, columns = super().splice(kwargs, encoded, keep, positions, for_generate)
        position_ids = new["position_ids"]
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            # Row 0 holds the text positions the LLM builds its mask from (and, without an attention mask, where
            # packed sequences start: wherever a position is not its left neighbour's + 1).
            position_ids = position_ids.clone()
            caller = kwargs.get("position_ids")
            if caller is not None and caller.ndim == 3 and caller.shape[0] == 4:
                # the caller's numbering (e.g. padding-free packing): renumbered within each of its sequences,
                # so dropped columns leave no gap that would read as a sequence boundary
                side = padding_side(kwargs.get("attention_mask"))
                position_ids[0] = packed_text_positions(caller[0], columns, side)
            else:
                # generate numbers them from the (shrunk) mask, so the reduced prompt gets what generate would give it
                position_ids[0] = self.text_positions(new["input_ids"], new.get("attention_mask"))
            new["position_ids"] = position_ids
        return new, columns

    def text_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N)`` text positions exactly as ``GenerationMixin._prepare_position_ids_for_generation``
        builds them (mask cumsum, padding at 0), without Qwen2-VL's override and its ``rope_deltas`` side effect."""
        from transformers.generation.utils import GenerationMixin

        extra = {"attention_mask": attention_mask} if attention_mask is not None else {}
        positions = GenerationMixin._prepare_position_ids_for_generation(self.model, input_ids, extra)
        return positions.expand(input_ids.shape[0], -1)

    def default_position_ids(self, kwargs: dict, for_generate: bool) -> torch.Tensor:
        """What the unpatched model uses for this unreduced prompt.

        ``forward``: ``(3, B, N)`` M-RoPE positions from ``get_rope_index``. ``generate``: ``(4, B, N)``,
        text positions first, as Qwen2-VL's ``_prepare_position_ids_for_generation`` builds them.
        """
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        rope, _ = self.model.model.get_rope_index(
            input_ids, kwargs["mm_token_type_ids"], image_grid_thw=kwargs.get("image_grid_thw"),
            video_grid_thw=kwargs.get("video_grid_thw"), attention_mask=mask,
        )
        if not for_generate:
            return rope
        return torch.cat([self.text_positions(input_ids, mask)[None], rope], dim=0)

    def embeds_position_ids(self, kwargs: dict, for_generate: bool) -> torch.Tensor:
        """Without ``input_ids`` the model cannot compute M-RoPE. ``generate`` repeats its text positions (mask
        cumsum) on every row, ``(4, B, N)``. ``forward`` numbers the columns ``0..N-1`` on all three rows, ``(3, B,
        N)`` — or, when an earlier call left ``model.model.rope_deltas`` set, numbers them from the mask and adds
        those deltas, as ``compute_3d_position_ids`` does."""
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        batch, width = input_ids.shape
        if for_generate:
            return self.text_positions(input_ids, mask)[None].expand(4, -1, -1)
        deltas = self.model.model.rope_deltas
        if deltas is None:
            return torch.arange(width, device=input_ids.device).view(1, 1, -1).expand(3, batch, -1)
        if mask is not None:
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[None].repeat(3, 1, 1)
        else:
            positions = torch.arange(width, device=input_ids.device).view(1, 1, -1).expand(3, batch, -1)
        return positions + deltas.repeat_interleave(batch // deltas.shape[0], dim=0).to(positions.device)

    def continue_positions(self, last_positions: torch.Tensor, valid_lengths: torch.Tensor) -> None:
        """Set ``model.model.rope_deltas`` (``(B, 1)``) as the unpatched model defines it for its own cache
        (next position = real cached tokens + delta), here for the reduced cache: the model's own numbering of
        a token after the cache (Qwen2-VL's decode path without ``position_ids``) continues after the last
        cached position."""
        rope = last_positions[-3:] if last_positions.ndim == 2 else last_positions[None]
        self.model.model.rope_deltas = (rope.amax(dim=0) + 1 - valid_lengths.to(rope.device))[:, None]

    def gather_positions(self, position_ids: torch.Tensor, columns: list[torch.Tensor], side: str) -> torch.Tensor:
        """Gather ``(B, N)`` or ``(R, B, N)`` position ids (R = 3 M-RoPE rows, or 4 with text first)."""
        return gather_columns(position_ids, columns, 0, side, batch_dim=0 if position_ids.ndim == 2 else 1)
