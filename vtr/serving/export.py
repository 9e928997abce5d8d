"""Reduced visual tokens as embeddings: what a serving engine that takes image embeddings needs.

An engine such as vLLM accepts, per image, the *post-projector* features (the LLM's input space)
and puts one placeholder token in the prompt per feature row. :func:`export` runs the same pre-LLM
path a patched ``generate`` runs (vision tower with probes → the reducer's plan → the kept,
projected rows; :func:`vtr.engine.pre_llm.reduce_call`) and returns, per prompt, the kept rows of
each image and the prompt ids with one placeholder per kept row.

Positions: an engine fed embeddings numbers the prompt it sees contiguously, so the text after an
image moves up by the number of dropped tokens. That is vtr's ``positions="renumber"`` (the original
LLaVA code's behaviour), not the default ``"original"``; outputs of the engine match a patched model
with ``positions="renumber"``, and accuracy figures measured with ``"original"`` do not carry over
exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vtr.adapters.layout import item_rows
from vtr.api import is_patched, patched
from vtr.engine.pre_llm import reduce_call

#: families whose embeddings an engine can take as they are (placeholder count = feature rows)
EXPORT_FAMILIES = ("llava", "llava_next")

#: why the other families are refused, by family
REFUSED_FAMILIES = {
    "qwen2_vl": "Qwen2-VL embeddings need image_grid_thw, from which vLLM derives both the placeholder count and "
                "the 3-D M-RoPE positions; reduced tokens need a vLLM model plugin that overrides both "
                "(see the README, 'Serving with vLLM', Qwen2-VL)",
    "qwen2_5_vl": "Qwen2.5-VL embeddings need image_grid_thw, from which vLLM derives both the placeholder count and "
                  "the 3-D M-RoPE positions; reduced tokens need a vLLM model plugin that overrides both "
                  "(see the README, 'Serving with vLLM', Qwen2-VL)",
    "video_llava": "vLLM has no Video-LLaVA model to feed embeddings to",
}


@dataclass
class ReducedPrompt:
    """One prompt (one batch row) with its images reduced, ready for an engine that takes embeddings.

    Attributes:
        prompt_token_ids: the prompt the LLM sees, without padding: ``len(image_embeds[i])``
            consecutive placeholders per image (vLLM's prompt after it expands
            :meth:`single_placeholder_ids`; what the HF model is fed).
        image_embeds: per image in prompt order, ``(N_keep_i, hidden)`` projected features on the
            CPU, in the model's dtype.
        placeholder_id: the image placeholder token id.
        visual_tokens_in: the visual tokens of this prompt before reduction (all images).
    """

    prompt_token_ids: list[int]
    image_embeds: list[torch.Tensor]
    placeholder_id: int
    visual_tokens_in: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> tuple[int, ...]:
        """Kept rows per image: ``(N_keep_1, ...)``."""
        return tuple(int(e.shape[0]) for e in self.image_embeds)

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def single_placeholder_ids(self) -> list[int]:
        """The prompt ids with each image's run collapsed to one placeholder: the form vLLM takes."""
        ids, out, i = self.prompt_token_ids, [], 0
        for n in self.rows:
            start = ids.index(self.placeholder_id, i)
            out += ids[i:start + 1]
            i = start + n
        return out + ids[i:]


def check_exportable(model) -> None:
    """The patched model's family and reducer must produce embeddings an engine can take as they are."""
    handle = model.vtr
    family = handle.adapter.family
    if family in REFUSED_FAMILIES:
        raise ValueError(f"vtr.serving cannot export {family!r} models: {REFUSED_FAMILIES[family]}; "
                         f"exportable families: {', '.join(EXPORT_FAMILIES)}")
    if family not in EXPORT_FAMILIES:
        raise ValueError(f"vtr.serving cannot export {family!r} models; exportable families: {', '.join(EXPORT_FAMILIES)}")
    reducer_class = handle.spec.reducer_class
    in_llm = reducer_class(handle.config).llm_layers(handle.adapter.text_config.num_hidden_layers)
    if not reducer_class.has_pre_llm_stage() or in_llm:
        where = "only inside the LLM" if not reducer_class.has_pre_llm_stage() else f"also inside the LLM (layers {in_llm})"
        raise ValueError(
            f"reducer {handle.reducer!r} drops tokens {where}; an engine fed embeddings runs its own decoder, so only "
            "reducers that act before the LLM can be exported (e.g. fastervlm, fopru, pool, random, vtc_cls)"
        )


def export(model, inputs: dict, reducer=None, **config) -> list[ReducedPrompt]:
    """Per batch row of ``inputs``, the reduced projected image features and the matching prompt ids.

    Args:
        model: a LLaVA-1.5 or LLaVA-NeXT model, patched with a pre-LLM reducer (``vtr.patch``), or
            unpatched with ``reducer`` (and its settings in ``config``): it is then patched for this
            call only and restored.
        inputs: processor outputs (``input_ids``, ``attention_mask``, ``pixel_values``, ...), any batch
            size, either padding side.
        reducer, **config: as in :func:`vtr.patch`.
    Returns:
        one :class:`ReducedPrompt` per row; ``model.vtr.stats`` (while patched) describes the call,
        and ``visual_tokens_out[b] == sum(rows)`` of row ``b``.
    Raises ``ValueError`` for a family or reducer that cannot be exported (Qwen2-VL: see
    :data:`REFUSED_FAMILIES`; in-LLM reducers such as fastv; merged tokens weighed by proportional
    attention, ``divrelay``'s default), before anything runs on the LLM.
    """
    if reducer is not None:
        if is_patched(model):
            raise ValueError(f"reducer={reducer!r} given for a model already patched with {model.vtr.reducer!r}; "
                             "pass one or the other")
        with patched(model, reducer, **config):
            return export(model, inputs)
    if config:
        raise ValueError(f"settings {sorted(config)} need reducer=...; the patched model's settings live on model.vtr.config")
    if not is_patched(model):
        raise ValueError("model is not patched: call vtr.patch(model, reducer, keep=...) first, or pass reducer=...")
    check_exportable(model)
    call = dict(inputs)
    if call.get("pixel_values") is None or call.get("input_ids") is None:
        raise ValueError("inputs need input_ids and pixel_values (the processor's output for prompts with images)")
    handle = model.vtr
    with torch.no_grad():
        reduced = reduce_call(handle, call, for_generate=True)
    stats = handle.stats
    if stats.key_bias is not None:  # known only once the plan is made: nothing has run on the LLM yet
        raise ValueError(
            f"reducer {handle.reducer!r} weighs its merged tokens inside the LLM (proportional attention: a log-size "
            "bias on their attention logits, model.vtr.stats.key_bias); an engine fed embeddings cannot take that bias, "
            "so it would not run the patched model: export with proportional=False"
        )
    features = list(reduced["mm_encoder_outputs"]["image"].pooler_output)
    token_id = handle.model.config.image_token_id
    ids, mask = reduced["input_ids"], reduced.get("attention_mask")
    owners = item_rows(ids, token_id, [f.shape[0] for f in features], "image", "pixel_values")
    prompts = []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b].bool()] if mask is not None else ids[b]
        embeds = [f.detach().to("cpu").contiguous() for f, owner in zip(features, owners) if owner == b]
        prompt = ReducedPrompt(row.tolist(), embeds, int(token_id), int(stats.visual_tokens_in[b]), list(stats.notes))
        if sum(prompt.rows) != stats.visual_tokens_out[b]:  # the export must be what the patched model feeds its LLM
            raise RuntimeError(f"row {b}: exported {sum(prompt.rows)} rows, the reduction kept {stats.visual_tokens_out[b]}")
        prompts.append(prompt)
    return prompts
