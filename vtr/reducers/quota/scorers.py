"""Frame scorers: how relevant each frame of a video is to the question, as a score ``p ≥ 0``.

- ``"self"`` (:func:`self_scores`): the patched model itself answers, for each frame, a yes/no
  question about it, and the score is P("A") (the "yes" option) from one forward pass per batch
  of frames, no generation. The frame is shown to the LLM as the model encoded it for the answer
  pass (its projected features, as a one-frame video), so no vision work is repeated.
- ``"clip"`` (:class:`ClipScorer`): cosine similarity of an ``open_clip``-style model's image and text
  embeddings, clamped at 0.
- any callable ``(frames, query) -> scores`` with ``frames`` a ``(T, H, W, 3)`` uint8 array (RGB,
  what :func:`vtr.media.load_video` returns) and ``query`` the question (or, with query decoupling
  on, the list of object names); ``scores`` ``T`` finite numbers ``≥ 0``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from vtr.media.images import CLIP_MEAN, CLIP_STD
from vtr.reducers.quota.llm import option_probability
from vtr.reducers.quota.prompts import PromptParts, media_prompt

OBJECTS_PROMPT = "Does the image contain any object of {objects}? A. yes, B. no\nAnswer with the option's letter directly."
QUESTION_PROMPT = ("{question}\nDoes the image contain sufficient information to answer the given question? "
                   "A. yes, B. no\nAnswer with the option's letter directly.")
#: the normalisation of CLIP-family processors (Video-LLaVA's and Qwen2-VL's), used when no processor says otherwise


def scoring_text(question: str, objects: list[str]) -> str:
    """The per-frame question: about the objects when there are any, else about the question itself."""
    if objects:
        return OBJECTS_PROMPT.replace("{objects}", ", ".join(objects))
    return QUESTION_PROMPT.replace("{question}", question)


def option_ids(tokenizer, letter: str = "A") -> list[int]:
    """Token ids that spell the answer ``letter`` on their own: ``"A"`` and ``" A"`` where each is one token
    (tokenizers differ in whether the answer after the turn marker carries a leading space)."""
    ids = []
    for text in (letter, " " + letter):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(f"the tokenizer has no single token for the answer letter {letter!r}; QuoTA's scorer='self' "
                         "needs one (use scorer='clip' or a callable scorer)")
    return ids


def self_scores(forward, visual, views: list[int], parts: PromptParts, text: str, tokenizer,
                batch_size: int) -> torch.Tensor:
    """P("A") per view of ``views``, asking ``text`` about each view alone. ``(len(views),)`` float32.

    Every row is the caller's template with one view's placeholder run and ``text`` as the question;
    rows of a batch are identical apart from the features, so they need no padding.
    """
    letters = option_ids(tokenizer)
    scores = torch.empty(len(views), dtype=torch.float32)
    layouts: dict[tuple[int, int], list[int]] = {}  # views grouped by (placeholder id, tokens)
    for position, v in enumerate(views):
        layouts.setdefault((visual.views[v].token_id, visual.views[v].n_tokens), []).append(position)
    for (token_id, n_tokens), positions in layouts.items():
        row = media_prompt(parts, token_id, n_tokens, text, tokenizer)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start:start + batch_size]
            ids = row.expand(len(chunk), -1).contiguous()
            extra = visual.view_inputs([views[p] for p in chunk], ids)
            scores[chunk] = option_probability(forward, ids, extra, letters).cpu()
    return scores


def frames_uint8(pixels: list[torch.Tensor], mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """Normalised ``(3, H, W)`` model pixels → ``(T, H, W, 3)`` uint8 RGB frames (the processor's
    normalisation undone; resizing and cropping are what the model saw)."""
    stacked = torch.stack([p.detach().float().cpu() for p in pixels])  # (T, 3, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    rgb = (stacked * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_scores(scores: Any, n_frames: int) -> torch.Tensor:
    """A scorer's output as ``(T,)`` float64, or a ``ValueError`` naming what is wrong."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double()
    try:
        values = torch.as_tensor(np.asarray(scores, dtype=np.float64)).flatten()
    except (TypeError, ValueError) as error:
        raise ValueError(f"scorer must return {n_frames} numbers (one per frame), got {type(scores).__name__}") from error
    if values.numel() != n_frames:
        raise ValueError(f"scorer returned {values.numel()} scores for {n_frames} frames; return one per frame")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"scorer must return finite scores >= 0 (relevance), got {values.tolist()}")
    return values


class ClipScorer:
    """Frame relevance from an image–text model with the ``open_clip`` interface.

    Score of a frame = ``max(0, cos(image embedding, text embedding))``; with several texts (object
    names from query decoupling) the largest similarity over them.

    Args:
        model: has ``encode_image((T, 3, h, w)) -> (T, E)`` and ``encode_text(tokens) -> (n, E)``.
        preprocess: a PIL image → ``(3, h, w)`` tensor (open_clip's ``preprocess`` transform).
        tokenizer: a list of strings → the tokens ``encode_text`` takes (open_clip's ``get_tokenizer``).
        batch_size: frames per ``encode_image`` call.
    """

    def __init__(self, model: Any, preprocess: Callable, tokenizer: Callable, batch_size: int = 64) -> None:
        for name in ("encode_image", "encode_text"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"clip_model must have an {name}() method (an open_clip model), got {type(model).__name__}")
        for name, value in (("clip_preprocess", preprocess), ("clip_tokenizer", tokenizer)):
            if not callable(value):
                raise TypeError(f"{name} must be callable (open_clip's preprocess / tokenizer), got {type(value).__name__}")
        self.model, self.preprocess, self.tokenizer, self.batch_size = model, preprocess, tokenizer, batch_size

    def device(self) -> torch.device:
        parameter = next(iter(getattr(self.model, "parameters", lambda: iter(()))()), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, query: str | list[str]) -> torch.Tensor:
        from PIL import Image

        texts = [query] if isinstance(query, str) else list(query)
        device = self.device()
        text = self.model.encode_text(self.tokenizer(texts).to(device)).float()
        text = text / text.norm(dim=-1, keepdim=True)
        scores = []
        for start in range(0, len(frames), self.batch_size):
            images = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[start:start + self.batch_size]])
            image = self.model.encode_image(images.to(device)).float()
            image = image / image.norm(dim=-1, keepdim=True)
            scores.append((image @ text.T).max(dim=-1).values.clamp(min=0).cpu())
        return torch.cat(scores)
