"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2-VL's layout plus DeepStack, timestamped video frame groups
and interleaved M-RoPE.

What differs from Qwen2-VL (transformers 5.24, ``models/qwen3_vl/modeling_qwen3_vl.py``), and how the adapter,
a subclass of :class:`~vtr.adapters.qwen2_vl.Qwen2VLAdapter`, handles it:

- **DeepStack.** The tower also merges the hidden states after each block of
  ``vision_config.deepstack_visual_indexes`` (``deepstack_merger_list``); ``get_image_features`` /
  ``get_video_features`` return them as ``deepstack_features`` (per level, a tuple of ``(t·h·w/4, D)`` per
  item, aligned with ``pooler_output``), and the text model adds level ``l`` to the visual tokens'
  hidden states after decoder layer ``l`` (``_deepstack_process`` over ``visual_pos_masks``). The reduced
  output gathers **every** DeepStack level with the same kept indices as ``pooler_output``, so each kept
  token gets its own injections and a removed token none. A merging reducer (``pool``, ``aim``'s merge)
  replaces a kept slot's main feature; its DeepStack features stay the slot's own (noted in ``stats.notes``).
- **Video.** The processor writes each frame group as its own ``<t seconds><|vision_start|>…<|vision_end|>``
  block; the placeholders of one video are still matched in order, so a video stays one segment with one
  view per frame group (timestamps are text, always kept). M-RoPE is interleaved and computed by the model's
  own ``get_rope_index`` on the unreduced prompt, as for Qwen2-VL.
- **Signal.** The tower attends over whole images / frame groups in every block (no windows); the adapted
  received-attention signal is Qwen2-VL's, from ``signal_block`` (default the last block, which feeds the
  merger), labelled adapted.
- **Inside the LLM**: refused at patch time — the decoder normalises q/k before RoPE and adds DeepStack
  features after its first layers to the positions of the visual tokens, which the in-LLM engine does not model.
"""
from __future__ import annotations

import torch

from vtr.adapters.qwen2_5_vl import relabel_notes
from vtr.adapters.qwen2_vl import PATCH_ATTENTION_NOTE, SUBSTITUTE_NOTE, Qwen2VLAdapter
from vtr.visual import VisualTokens

NOTES = {
    SUBSTITUTE_NOTE: SUBSTITUTE_NOTE.replace("on qwen2_vl", "on qwen3_vl"),
    PATCH_ATTENTION_NOTE: PATCH_ATTENTION_NOTE.replace("on qwen2_vl", "on qwen3_vl"),
}
DEEPSTACK_MERGED_NOTE = ("qwen3_vl: merged tokens carry their slot's own DeepStack features (the reducer merged the "
                         "main features only)")


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_classes = ("Qwen3VLForConditionalGeneration",)
    rejected_inputs = {
        "image_sizes": "Qwen3-VL takes image_grid_thw from its own processor, not image_sizes",
    }
    in_llm_refusal = ("its decoder normalises q/k before RoPE and adds DeepStack visual features after its first "
                      "layers, which vtr's in-LLM engine does not model")

    def substitute_signal(self, probe, merge: int, tokens: VisualTokens) -> list[torch.Tensor]:
        scores = super().substitute_signal(probe, merge, tokens)
        relabel_notes(tokens, self.signal_block, NOTES)
        return scores

    def patch_attention_signal(self, probe, merge: int, tokens: VisualTokens, probs: bool) -> list[torch.Tensor]:
        scores = super().patch_attention_signal(probe, merge, tokens, probs)
        relabel_notes(tokens, self.signal_block, NOTES)
        return scores

    def segment_keep(self, encoded, plan: list[torch.Tensor]) -> list[torch.Tensor]:
        # called once the plan (and any merge) is known, before the call's notes are collected
        merged = any(f is not o for f, o in zip(encoded.visual.features, encoded.view_features))
        if merged and DEEPSTACK_MERGED_NOTE not in encoded.visual.notes:
            encoded.visual.notes.append(DEEPSTACK_MERGED_NOTE)
        return super().segment_keep(encoded, plan)

    def reduced_outputs(self, encoded, keep: list[torch.Tensor]):
        """Qwen2-VL's reduced output, with every DeepStack level gathered at the same kept indices."""
        outputs = super().reduced_outputs(encoded, keep)
        outputs.deepstack_features = [tuple(f.index_select(0, k.to(f.device)) for f, k in zip(level, keep))
                                      for level in encoded.outputs.deepstack_features]
        return outputs
