"""Per-call state of the QuoTA reducer: tokenizer, each row's question, decoupled objects, frame scores."""
from __future__ import annotations

import functools
import time
from typing import Any

import torch

from vtr.reducers.quota.cot import decouple_prompt, parse_objects
from vtr.reducers.quota.llm import greedy_text
from vtr.reducers.quota.prompts import PromptParts, split_prompt, text_prompt
from vtr.media.images import CLIP_MEAN, CLIP_STD
from vtr.reducers.quota.scorers import ClipScorer, check_scores, frames_uint8, scoring_text, self_scores


@functools.lru_cache(maxsize=4)
def load_processor(path: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, local_files_only=True)


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", None) or processor


def pixel_normalisation(processor: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The processor's video (else image) mean and std; CLIP's when it does not say."""
    for name in ("video_processor", "image_processor"):
        part = getattr(processor, name, None)
        if getattr(part, "image_mean", None) is not None and getattr(part, "image_std", None) is not None:
            return tuple(part.image_mean), tuple(part.image_std)
    return CLIP_MEAN, CLIP_STD


class QueryContext:
    """What one QuoTA call needs beyond the features, computed on first use and kept for the call.

    ``seconds`` holds the wall time spent decoupling queries and scoring frames.
    """

    def __init__(self, config, visual) -> None:
        self.config, self.visual = config, visual
        self.seconds = {"quota_decouple": 0.0, "quota_score": 0.0}
        self._processor: Any = None
        self._parts: dict[tuple[int, int], PromptParts] = {}
        self._objects: dict[str, list[str]] = {}

    # -- what the model family and the user provide -----------------------------------------------
    @property
    def processor(self) -> Any:
        if self._processor is None:
            given = self.config.processor
            self._processor = given if given is not None else self._load_processor()
        return self._processor

    def _load_processor(self) -> Any:
        path = self.visual.model.name_or_path if self.visual.model is not None else ""
        reason = "the model has no name_or_path to load it from"
        if path:
            try:
                return load_processor(path)
            except Exception as error:  # noqa: BLE001  (any loading failure ends in the same advice)
                reason = f"AutoProcessor.from_pretrained({path!r}, local_files_only=True) failed: {error}"
        raise ValueError(
            "QuoTA reads the question from the prompt and writes its own prompts, so it needs the model's tokenizer: "
            f"pass processor=<the model's processor or tokenizer> to vtr.patch (or set model.vtr.config.processor); {reason}"
        )

    @property
    def tokenizer(self) -> Any:
        return tokenizer_of(self.processor)

    def require(self, *fields: str, why: str) -> None:
        missing = [f for f in fields if getattr(self.visual, f) is None]
        if missing:
            raise ValueError(f"{why} needs what the {self.visual.signals.family!r} adapter does not provide "
                             f"({', '.join(missing)}); QuoTA supports video_llava, qwen2_vl and qwen2_5_vl")

    # -- question and objects -------------------------------------------------------------------
    def parts(self, sample: int, token_id: int) -> PromptParts:
        key = (sample, token_id)
        if key not in self._parts:
            self.require("prompt_ids", why="reading the question from the prompt")
            self._parts[key] = split_prompt(self.visual.prompt_ids[sample], token_id, self.tokenizer)
        return self._parts[key]

    def question(self, sample: int, token_id: int) -> str:
        given = self.config.question
        if isinstance(given, (list, tuple)):
            rows = len(self.visual.prompt_ids) if self.visual.prompt_ids is not None else None
            if rows is not None and len(given) != rows:
                raise ValueError(f"question has {len(given)} entries for a batch of {rows} rows; pass one per row")
            given = given[sample]
        if given:
            return given
        question = self.parts(sample, token_id).question
        if not question:
            raise ValueError(
                f"QuoTA scores frames against the question, but row {sample} has no text after its video "
                "placeholders; put the question after the video in the prompt, or pass question='...' to vtr.patch "
                "(or set model.vtr.config.question)"
            )
        return question

    def decouple(self) -> bool:
        return self.config.scorer == "self" if self.config.decouple is None else self.config.decouple

    def objects(self, sample: int, token_id: int, question: str) -> list[str]:
        """Physical objects in ``question`` (CoT query decoupling, one text-only greedy pass, cached)."""
        if not self.decouple():
            return []
        if question not in self._objects:
            self.require("model", "prompt_ids", why="query decoupling")
            start = time.perf_counter()
            tokenizer = self.tokenizer
            ids = text_prompt(self.parts(sample, token_id), decouple_prompt(question), tokenizer)
            stop = {i for i in (tokenizer.eos_token_id, getattr(tokenizer, "pad_token_id", None)) if i is not None}
            stop |= set(self.visual.model.eos_token_ids)
            new = greedy_text(self.visual.model.forward, ids, self.config.decouple_tokens, stop)
            self._objects[question] = parse_objects(tokenizer.decode(new, skip_special_tokens=True))
            self.seconds["quota_decouple"] += time.perf_counter() - start
        return self._objects[question]

    # -- scores ---------------------------------------------------------------------------------
    def score(self, views: list[int]) -> tuple[str, list[str], torch.Tensor]:
        """Question, objects and ``(T,)`` scores of the frames ``views`` of one video."""
        first = self.visual.views[views[0]]
        question = self.question(first.sample, first.token_id)
        objects = self.objects(first.sample, first.token_id, question)
        start = time.perf_counter()
        scorer = self.config.scorer
        if scorer == "self":
            self.require("model", "view_inputs", "prompt_ids", why="scorer='self'")
            scores = self_scores(self.visual.model.forward, self.visual, views,
                                 self.parts(first.sample, first.token_id), scoring_text(question, objects),
                                 self.tokenizer, self.config.score_batch)
        else:
            if scorer == "clip":
                scorer = ClipScorer(self.config.clip_model, self.config.clip_preprocess, self.config.clip_tokenizer,
                                    self.config.score_batch)
            self.require("view_pixels", why="a clip or callable scorer")
            mean, std = pixel_normalisation(self._processor if self._processor is not None else self.config.processor)
            pixels = self.visual.view_pixels()
            frames = frames_uint8([pixels[v] for v in views], mean, std)
            scores = scorer(frames, objects or question)
        self.seconds["quota_score"] += time.perf_counter() - start
        return question, objects, check_scores(scores, len(views))

    def report_seconds(self) -> None:
        """Hand the decoupling and scoring times to the engine (they land in ``model.vtr.stats.seconds``)."""
        for key, value in self.seconds.items():
            self.visual.seconds[key] = self.visual.seconds.get(key, 0.0) + value

