"""What every model adapter provides, and the splice shared by placeholder-run models.

An adapter is the only code that knows a transformers model's module paths. It

1. runs the vision tower with probes and returns :class:`Encoded` (features, layout, signals),
2. rebuilds the model's own feature output with only the kept tokens, and
3. splices the prompt: shrinks the placeholder runs and gathers every sequence-aligned input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vtr.adapters.layout import with_prefix
from vtr.engine.splice import Segment, gather_columns, kept_columns, padding_side, read_as_packed
from vtr.probes.decoder import DecoderAttention
from vtr.signals import Signal
from vtr.visual import View, VisualTokens



#: inputs aligned with the prompt's columns, gathered with the kept columns (with their pad value)
SEQUENCE_INPUTS = {"input_ids": None, "attention_mask": 0, "labels": -100, "shift_labels": -100, "token_type_ids": 0,
                   "mm_token_type_ids": 0}


@dataclass
class Encoded:
    """One modality's encoded visual input.

    Attributes:
        modality: the key of ``mm_encoder_outputs`` (``"image"`` or ``"video"``).
        visual: features, layout and signals handed to the reducer.
        outputs: the model's own ``get_*_features`` output, reused for the reduced call.
    """

    modality: str
    visual: VisualTokens
    outputs: Any
    segments: list[Segment] | None = None  # None: one segment per view

    def __post_init__(self) -> None:
        if self.segments is None:
            self.segments = [Segment(v.sample, v.n_tokens, v.token_id) for v in self.visual.views]


class Adapter:
    """Base class of model adapters. Subclasses set ``family``/``model_classes`` and implement
    :meth:`encode` and :meth:`reduced_outputs`."""

    family: str = "?"
    model_classes: tuple[str, ...] = ()
    #: visual inputs this family accepts, by keyword
    visual_inputs: tuple[str, ...] = ("pixel_values",)
    #: signals this family computes (:class:`~vtr.signals.Signal`); a reducer reading others is
    #: refused at patch time
    provides: frozenset = frozenset()
    #: signals the call's reducer declared (``Reducer.vision_signals``), set by the pipeline before
    #: :meth:`encode`: probes that cost something (every tower layer) run only when asked for
    requested_signals: frozenset[str] = frozenset()
    #: the ``positions`` settings this family supports
    position_modes: tuple[str, ...] = ("original", "renumber")
    #: visual keywords of other families, mapped to why they are rejected here
    rejected_inputs: dict[str, str] = {}
    #: why reducers that drop tokens inside the LLM are refused on this family ("" : they run)
    in_llm_refusal: str = ""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return type(model).__name__ in cls.model_classes

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    # -- the decoder: module paths the in-LLM engine needs --------------------------------------
    @property
    def language_model(self) -> torch.nn.Module:
        """The decoder stack, whose forward gets ``inputs_embeds``, masks and positions (hooked by the
        in-LLM engine); the same path in every supported family."""
        return self.model.model.language_model

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The decoder layers, in order; each one's forward pre-hook sees the hidden states."""
        return self.language_model.layers

    def decoder_attention(self, index: int) -> DecoderAttention:
        """The attention parts of decoder layer ``index`` that the engine probes (Llama/Qwen2 layout)."""
        attention = self.decoder_layers()[index].self_attn
        return DecoderAttention(attention, attention.q_proj, attention.k_proj, attention.head_dim, attention.scaling)

    def decoder_attention_implementation(self) -> str:
        """``"eager"``, ``"sdpa"``, ...: decides whether the engine hands layers a 4-D float mask."""
        return getattr(self.language_model.config, "_attn_implementation", None) or "sdpa"

    def placeholder_ids_from_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` stand-in ``input_ids`` for a call given ``inputs_embeds`` ``(B, N, D)``: each placeholder id
        where the embedding equals that token's embedding (how the model locates them), the pad id elsewhere."""
        embed = self.model.get_input_embeddings()
        ids = torch.full(inputs_embeds.shape[:2], self.pad_token_id, dtype=torch.long, device=inputs_embeds.device)
        for token_id in self.placeholder_ids():
            vector = embed(torch.tensor(token_id, device=inputs_embeds.device)).to(inputs_embeds.dtype)
            ids[(inputs_embeds == vector).all(dim=-1)] = token_id
        return ids

    def placeholder_ids(self) -> list[int]:
        """Token ids that stand for visual tokens in ``input_ids`` (image and video)."""
        config = self.model.config
        names = ("image_token_id", "video_token_id", "image_token_index", "video_token_index")
        return sorted({getattr(config, n) for n in names if getattr(config, n, None) is not None})

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.text_config, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.generation_config, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    # -- inputs ---------------------------------------------------------------------------------
    def check_inputs(self, kwargs: dict) -> None:
        """Reject inputs this family cannot take, before anything runs."""
        for key, why in self.rejected_inputs.items():
            if kwargs.get(key) is not None:
                raise ValueError(f"{key!r} is not supported by {self.family!r} models: {why}")
        has_visual = any(kwargs.get(k) is not None for k in self.visual_inputs)
        if has_visual and kwargs.get("input_ids") is None:
            raise ValueError(
                "a patched model needs input_ids or inputs_embeds alongside visual inputs, to find the "
                "placeholder tokens it shrinks; pass the processor's input_ids"
            )
        if has_visual and kwargs.get("mm_encoder_outputs"):
            raise ValueError("pass either raw visual inputs or mm_encoder_outputs to a patched model, not both")
        if has_visual:
            # these are gathered at the kept columns of the caller's prompt, so they must be aligned with it
            shape = tuple(kwargs["input_ids"].shape)
            for key in SEQUENCE_INPUTS:
                value = kwargs.get(key)
                if key == "attention_mask" and isinstance(value, torch.Tensor) and value.ndim == 4:
                    raise ValueError(
                        f"attention_mask is a custom 4-D mask of shape {tuple(value.shape)}; with visual inputs a "
                        "patched model takes a 2-D padding mask (B, N) only (4-D masks: text-only calls)"
                    )
                if key != "input_ids" and isinstance(value, torch.Tensor) and tuple(value.shape) != shape:
                    raise ValueError(
                        f"{key} has shape {tuple(value.shape)}; a patched model needs it aligned with the caller's "
                        f"input_ids, shape {shape} (one entry per prompt column, before any reduction)"
                    )

    def encode(self, kwargs: dict) -> list[Encoded]:
        """Run the vision side with probes; one :class:`Encoded` per modality present ([] for none)."""
        raise NotImplementedError

    def add_shared_signals(self, encoded: Encoded, kwargs: dict) -> None:
        """Register the signals every family computes the same way (called by the engine after :meth:`encode`)."""
        if Signal.PROMPT_EMBEDDINGS in self.provides:
            views = encoded.visual.views
            encoded.visual.signals.add(Signal.PROMPT_EMBEDDINGS, lambda: self.prompt_embeddings(kwargs, views))

    def prompt_embeddings(self, kwargs: dict, views: list[View]) -> list[torch.Tensor]:
        """Per view, ``(T, D)`` float32 input embeddings of its row's instruction (see ``Signal.PROMPT_EMBEDDINGS``)."""
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        placeholders = torch.tensor(self.placeholder_ids(), device=ids.device)
        embed = self.model.get_input_embeddings()
        rows: dict[int, torch.Tensor] = {}
        for b in sorted({v.sample for v in views}):
            valid = mask[b].bool() if mask is not None else torch.ones_like(ids[b], dtype=torch.bool)
            visual = torch.isin(ids[b], placeholders)
            text = valid & ~visual
            after = text.clone()
            if bool(visual.any()):
                after[: int(visual.nonzero().max()) + 1] = False
            text = after if bool(after.any()) else text  # the instruction follows the media in chat templates
            with torch.no_grad():
                rows[b] = embed(ids[b][text]).float()
        return [rows[v.sample] for v in views]

    def segment_keep(self, encoded: Encoded, plan: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-view kept patch indices → per-segment kept token indices (sorted).

        Default: one segment per view, its prefix tokens (e.g. a [CLS] feature) always kept.
        Adapters whose segments pack several views (AnyRes, video frames) override this.
        """
        return [with_prefix(p, v.n_prefix) for p, v in zip(plan, encoded.visual.views)]

    def reduced_outputs(self, encoded: Encoded, keep: list[torch.Tensor]):
        """The model's feature output holding only the kept tokens (``keep``: per segment, token indices)."""
        raise NotImplementedError

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(k, D_vision)`` features in the space of ``Signal.PRE_PROJECTOR_FEATURES`` → ``(k, D)``, as the
        model's projector maps them (features merged before the projector). Families that provide that
        signal override this; the engine calls it for plan elements marked ``pre_projector``."""
        raise NotImplementedError(f"{self.family!r} models do not project pre-projector features "
                                  f"(they do not provide {Signal.PRE_PROJECTOR_FEATURES.value!r})")

    # -- splice ---------------------------------------------------------------------------------
    def default_position_ids(self, kwargs: dict, for_generate: bool) -> torch.Tensor:
        """The position ids the unpatched model would use for this unreduced prompt, ``(B, N)``."""
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if for_generate:
            extra = {"attention_mask": mask} if mask is not None else {}
            return self.model._prepare_position_ids_for_generation(input_ids, extra).expand(input_ids.shape[0], -1)
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)

    def embeds_position_ids(self, kwargs: dict, for_generate: bool) -> torch.Tensor | None:
        """Position ids the unpatched model uses for a call with ``inputs_embeds`` and no ``input_ids`` (vtr
        derived ``kwargs["input_ids"]`` from the embeddings), when they differ from :meth:`default_position_ids`;
        ``None`` (the default) when they do not."""
        return None

    def splice(
        self, kwargs: dict, encoded: list[Encoded], keep: list[list[torch.Tensor]], positions: str, for_generate: bool
    ) -> tuple[dict, list[torch.Tensor]]:
        """Reduced call kwargs, and per row the kept columns of the caller's prompt.

        ``keep[m][s]``: sorted token indices kept in segment ``s`` of modality ``m``.
        """
        segments = [s for e in encoded for s in e.segments]
        flat_keep = [k for per_modality in keep for k in per_modality]
        # Nothing dropped (keep=1.0): the prompt keeps its exact layout, padding included (the identity)
        full = all(len(k) == s.n_tokens for k, s in zip(flat_keep, segments))
        columns = kept_columns(kwargs["input_ids"], segments, flat_keep, None if full else kwargs.get("attention_mask"))
        side = padding_side(kwargs.get("attention_mask"))
        new = {k: v for k, v in kwargs.items() if k not in self.visual_inputs}
        lengths = {len(c) for c in columns}
        caller_numbered = kwargs.get("position_ids") is not None
        if (not full and positions == "original" and read_as_packed(kwargs, for_generate)
                and kwargs["position_ids"].ndim == 2):
            raise ValueError(
                f"position_ids pack several sequences into one row (padding-free input); on {self.family!r} models "
                "the kept tokens keep their original positions, and the gaps the dropped ones leave would read as "
                "sequence starts: pass the sequences as a padded batch with an attention_mask"
            )
        if kwargs.get("attention_mask") is None and (len(lengths) > 1 or (not full and positions == "original"
                                                                          and not caller_numbered)):
            # rows now need padding; or the kept columns' original positions have gaps, which transformers would
            # read as the starts of packed sequences when no mask is given (use_cache=False)
            new["attention_mask"] = torch.ones_like(kwargs["input_ids"])
        for key, pad in SEQUENCE_INPUTS.items():
            if new.get(key) is not None:
                value = self.pad_token_id if key == "input_ids" else pad
                new[key] = gather_columns(new[key], columns, value, side)
        if new.get("inputs_embeds") is not None:  # (B, N, D): gathered along the sequence like the ids
            embeds = new["inputs_embeds"].transpose(1, 2)
            new["inputs_embeds"] = gather_columns(embeds, columns, 0.0, side).transpose(1, 2)
        if positions == "original":
            base = kwargs.get("position_ids")
            if base is None:
                base = self.default_position_ids(kwargs, for_generate)
            new["position_ids"] = self.gather_positions(base, columns, side)
        else:
            new.pop("position_ids", None)  # the model numbers the shorter prompt contiguously
        mm = dict(kwargs.get("mm_encoder_outputs") or {})
        for e, k in zip(encoded, keep):
            mm[e.modality] = self.reduced_outputs(e, k)
        new["mm_encoder_outputs"] = mm
        return new, columns

    def gather_positions(self, position_ids: torch.Tensor, columns: list[torch.Tensor], side: str) -> torch.Tensor:
        """Gather ``(B, N)`` position ids (families with 3-D positions override this)."""
        return gather_columns(position_ids, columns, 0, side)

    def continue_positions(self, last_positions: torch.Tensor, valid_lengths: torch.Tensor) -> None:
        """After a patched ``generate``: leave the model's own position state consistent with the reduced
        cache (``last_positions``: ``(B,)`` or ``(R, B)`` position of the last cached slot; ``valid_lengths``:
        ``(B,)`` real, unpadded slots per row). Families whose model keeps such state (Qwen2-VL's
        ``rope_deltas``) override this."""
