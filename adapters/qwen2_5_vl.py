"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): Qwen2-VL's layout with a windowed vision tower and
absolute-time M-RoPE for video.

What differs from Qwen2-VL (transformers 5.24, ``models/qwen2_5_vl/modeling_qwen2_5_vl.py``), and how the
adapter, a subclass of :class:`~vtr.adapters.qwen2_vl.Qwen2VLAdapter`, handles it:

- **Windowed vision attention.** ``Qwen2_5_VisionTransformerPretrainedModel.forward`` reorders the patches
  into ``window_size``-pixel windows (``get_vision_window_index``, in merge units, windows of each frame
  contiguous) before the first block; blocks not in ``config.vision_config.fullatt_block_indexes`` attend
  within a window (``cu_window_seqlens``), the others over a whole image / frame group (``cu_seqlens``);
  the merger's output is put back in raster order with ``argsort(window_index)``. So ``pooler_output``
  (what the LLM sees) is in raster order, as in Qwen2-VL, while every block's q/k are in window order.
- **The adapted importance signal** (no [CLS]) is read from a *full-attention* block, by default the last
  one (``fullatt_block_indexes[-1]``, block 31 of the 7B, which is also the last block): the attention each
  merged token receives, exactly as on Qwen2-VL (column mean over its image / frame group, head mean, 2×2
  merge mean), then moved from window order back to raster order. ``signal_block`` may name any
  full-attention block; a windowed block is refused (its attention never crosses a window, so its columns
  do not rank an image's tokens against each other). FoPru's patch-attention means come from the same block.
  Both are labelled adapted in ``stats.notes``. A tower with no full-attention block at all (every
  ``fullatt_block_indexes`` entry at or past its depth, as in transformers' own tiny test configs) has only
  windowed blocks: the signals then come from one of them (default the last), per window, and the note says so.
- **Absolute time.** For video, ``get_rope_index`` spaces frame groups by
  ``tokens_per_second · second_per_grid_ts`` temporal positions; the adapter passes the processor's
  ``second_per_grid_ts`` when it computes the unreduced positions, so kept tokens keep their time positions.
  ``second_per_grid_ts`` then leaves the reduced call with the other visual inputs.

The decoder is Qwen2-VL's (``q_proj``/``k_proj``, RoPE cos/sin passed to each attention), so the in-LLM
reducers run unchanged.
"""
from __future__ import annotations

import torch
from transformers.vision_utils import get_vision_window_index

from vtr.adapters.qwen2_vl import PATCH_ATTENTION_NOTE, SUBSTITUTE_NOTE, Qwen2VLAdapter
from vtr.probes.vision import patch_attention_means
from vtr.visual import View, VisualTokens

NOTES = {
    SUBSTITUTE_NOTE: (
        "cls_attention on qwen2_5_vl is the adapted received-attention substitute (no [CLS]): attention each merged "
        "token receives in full-attention vision block {block}, column mean over its image/frame group, head mean, "
        "2x2 merge mean, put back from window order into raster order"
    ),
    PATCH_ATTENTION_NOTE: (
        "patch_attention_*_means on qwen2_5_vl (FoPru's significance) is adapted: the patch-to-patch attention of "
        "full-attention vision block {block} per image/frame group, head mean, then the mean over each 2x2 merge "
        "window, in raster order; there is no [CLS] to exclude"
    ),
}
#: the same signals on a tower none of whose blocks attends globally (every ``fullatt_block_indexes`` entry at
#: or past its depth, as in transformers' own tiny test configs): read from a windowed block, the only kind there is
WINDOWED_NOTES = {
    SUBSTITUTE_NOTE: (
        "cls_attention on qwen2_5_vl is the adapted received-attention substitute (no [CLS]): attention each merged "
        "token receives in windowed vision block {block} (this tower has no full-attention block, so the scores "
        "rank tokens only against their own window), column mean over its image/frame group, head mean, 2x2 merge "
        "mean, put back from window order into raster order"
    ),
    PATCH_ATTENTION_NOTE: (
        "patch_attention_*_means on qwen2_5_vl (FoPru's significance) is adapted: the patch-to-patch attention of "
        "windowed vision block {block} (this tower has no full-attention block) per image/frame group, head mean, "
        "then the mean over each 2x2 merge window, in raster order; there is no [CLS] to exclude"
    ),
}


def relabel_notes(tokens: VisualTokens, block: int, notes: dict[str, str]) -> None:
    """In ``tokens.notes``, replace each Qwen2-VL note (``notes`` keys, formatted with ``block``) by the family's."""
    for parent, mine in notes.items():
        old, new = parent.format(block=block), mine.format(block=block)
        if old in tokens.notes:
            tokens.notes[:] = [n for n in tokens.notes if n not in (old, new)] + [new]


def add_note(tokens: VisualTokens, note: str) -> None:
    if note not in tokens.notes:
        tokens.notes.append(note)


def view_runs(chunks: list[torch.Tensor], views: list[View]) -> list[torch.Tensor]:
    """Per-window scores ``(..., n_w)`` (window order, the windows of each view consecutive) → per view
    ``(..., n_patches)``, each the concatenation of its windows' runs (still in window order)."""
    out, start = [], 0
    for view in views:
        end, total = start, 0
        while total < view.n_patches and end < len(chunks):
            total += chunks[end].shape[-1]
            end += 1
        if total != view.n_patches:
            raise RuntimeError("vision attention windows do not line up with the image/frame-group views")
        out.append(torch.cat(chunks[start:end], dim=-1))
        start = end
    if start != len(chunks):
        raise RuntimeError("vision attention windows do not line up with the image/frame-group views")
    return out


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_classes = ("Qwen2_5_VLForConditionalGeneration",)
    #: second_per_grid_ts only describes the video grids, which the reduced call no longer carries
    visual_inputs = Qwen2VLAdapter.visual_inputs + ("second_per_grid_ts",)
    rejected_inputs = {
        "image_sizes": "Qwen2.5-VL takes image_grid_thw from its own processor, not image_sizes",
    }
    #: without mm_token_type_ids the unpatched Qwen2.5-VL runs, numbering the columns as text (no M-RoPE)
    needs_token_types = False

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self._signal_block: int | None = None

    @property
    def signal_block(self) -> int:
        """The full-attention vision block whose attention substitutes for [CLS] attention (default: the last
        of ``fullatt_block_indexes``; negative counts from the end). Set it on the live handle:
        ``model.vtr.adapter.signal_block = 15``; ``None`` restores the default. Checked at the next call.
        A tower without any full-attention block (every ``fullatt_block_indexes`` entry at or past its depth)
        reads the signal from a windowed block, by default its last, and says so in ``stats.notes``."""
        if self._signal_block is not None:
            return self._signal_block
        full = self.full_attention_blocks
        return full[-1] if full else len(self.model.model.visual.blocks) - 1

    @signal_block.setter
    def signal_block(self, value: int | None) -> None:
        self._signal_block = value

    @property
    def full_attention_blocks(self) -> list[int]:
        """The tower's full-attention blocks: the ``fullatt_block_indexes`` it has (the config may name blocks
        past its depth, which the tower never runs)."""
        depth = len(self.model.model.visual.blocks)
        return [b for b in self.model.config.vision_config.fullatt_block_indexes if 0 <= b < depth]

    # -- encode ---------------------------------------------------------------------------------
    def encode_modality(self, modality: str, kwargs: dict):
        block, depth, full = self.signal_block, len(self.model.model.visual.blocks), self.full_attention_blocks
        allowed = full or list(range(depth))  # no full-attention block: every block is windowed alike
        if isinstance(block, bool) or not isinstance(block, int) or not -depth <= block < depth or block % depth not in allowed:
            raise ValueError(
                f"signal_block={block} is not a full-attention block of this Qwen2.5-VL vision tower (the others "
                f"attend within {self.model.config.vision_config.window_size}-pixel windows only); allowed: "
                f"{', '.join(str(b) for b in allowed)}, or None for the last ({allowed[-1]})"
            )
        return super().encode_modality(modality, kwargs)

    def substitute_signal(self, probe, merge: int, tokens: VisualTokens) -> list[torch.Tensor]:
        """Per view ``(n_patches,)`` received attention of the full-attention block, in raster order."""
        if self.full_attention_blocks:
            scores = super().substitute_signal(probe, merge, tokens)
        else:  # a windowed block: one chunk per window, the windows of a view consecutive
            add_note(tokens, SUBSTITUTE_NOTE.format(block=self.signal_block))
            scores = view_runs(probe.received_attention(merge), tokens.views)
        return self.raster_order(self.relabel(tokens, scores), tokens.views)

    def patch_attention_signal(self, probe, merge: int, tokens: VisualTokens, probs: bool) -> list[torch.Tensor]:
        """Per view ``(2, n_patches)`` column/row means of the full-attention block, in raster order."""
        if self.full_attention_blocks:
            scores = super().patch_attention_signal(probe, merge, tokens, probs)
        else:
            add_note(tokens, PATCH_ATTENTION_NOTE.format(block=self.signal_block))
            q, k = probe.rotated_qk()
            bounds = probe.cu_seqlens.tolist()
            windows = []
            for start, end in zip(bounds[:-1], bounds[1:]):
                chunk = [x[start:end].reshape(1, end - start, -1) for x in (q, k)]  # (1, n_w, H*d)
                means = patch_attention_means(*chunk, probe.attention.num_heads, probe.attention.scaling,
                                              probs=probs, n_prefix=0)[0]
                windows.append(means.view(2, -1, merge * merge).mean(dim=-1))
            scores = view_runs(windows, tokens.views)
        return self.raster_order(self.relabel(tokens, scores), tokens.views)

    def relabel(self, tokens: VisualTokens, scores):
        """Replace the Qwen2-VL note the parent just added by this family's."""
        relabel_notes(tokens, self.signal_block, NOTES if self.full_attention_blocks else WINDOWED_NOTES)
        return scores

    def raster_order(self, scores: list[torch.Tensor], views: list[View]) -> list[torch.Tensor]:
        """Per-chunk scores ``(..., n)`` in the tower's window order → raster order of the merged grid.

        Each chunk is one view (an image or a frame group), and the tower's window order of a frame
        depends only on its grid, so each view's permutation is transformers' own
        ``get_vision_window_index`` of a one-frame grid; ``raster[window_index[j]] = window_ordered[j]``.
        """
        vision = self.model.config.vision_config
        merge = vision.spatial_merge_size
        ordered = []
        for s, view in zip(scores, views):
            grid = torch.tensor([[1, view.grid[0] * merge, view.grid[1] * merge]])
            window_index, _ = get_vision_window_index(grid, merge, vision.window_size, vision.patch_size)
            raster = torch.empty_like(s)
            raster[..., window_index.to(s.device)] = s
            ordered.append(raster)
        return ordered

    # -- positions ------------------------------------------------------------------------------
    def default_position_ids(self, kwargs: dict, for_generate: bool) -> torch.Tensor:
        """Qwen2-VL's, with video frame groups at their absolute times (``second_per_grid_ts``):
        ``(3, B, N)`` for ``forward``, ``(4, B, N)`` (text positions first) for ``generate``. Without
        ``mm_token_type_ids`` what the unpatched model then uses: text positions on every row (no M-RoPE)."""
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if kwargs.get("mm_token_type_ids") is None:
            if for_generate:
                return self.text_positions(input_ids, mask)[None].expand(4, -1, -1)
            batch, width = input_ids.shape
            return torch.arange(width, device=input_ids.device).view(1, 1, -1).expand(3, batch, -1)
        rope, _ = self.model.model.get_rope_index(
            input_ids, kwargs["mm_token_type_ids"], image_grid_thw=kwargs.get("image_grid_thw"),
            video_grid_thw=kwargs.get("video_grid_thw"), second_per_grid_ts=kwargs.get("second_per_grid_ts"),
            attention_mask=mask,
        )
        return torch.cat([self.text_positions(input_ids, mask)[None], rope], dim=0) if for_generate else rope
