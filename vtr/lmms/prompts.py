"""From an lmms-eval request to processor inputs: the media a task's ``doc_to_visual`` returns, and the
prompt in the model's own chat format (no lmms-eval import here).

lmms-eval hands a model a plain question (``context``) and a list of visuals (PIL images, video paths,
frame arrays); it leaves the prompt format to the model. Models with a chat template get it applied
(one ``{"type": "image"}`` / ``{"type": "video"}`` content item per visual, then the text, generation prompt
on); models without one get LLaVA-1.5's conversation format ``USER: <media>\\n{question} ASSISTANT:``, with
the media token wrapped in ``<|vision_start|>…<|vision_end|>`` where the tokenizer has those (Qwen2-VL).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: file endings read as videos when a task's ``doc_to_visual`` returns a path
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".flv", ".mpeg", ".mpg", ".gif")
VISION_WRAP = ("<|vision_start|>", "<|vision_end|>")


@dataclass
class Media:
    """One request's visuals, split by kind, in the order the task gave them."""

    images: list[Image.Image] = field(default_factory=list)
    videos: list[np.ndarray] = field(default_factory=list)  # each (T, H, W, 3) uint8
    kinds: list[str] = field(default_factory=list)  # "image" / "video" per visual, in order


def collect_media(visuals: Any, num_frames: int) -> Media:
    """Sort a task's visuals into images and videos.

    ``visuals``: what ``doc_to_visual(doc)`` returned (a list, possibly nested one level, or ``None``):
    PIL images, paths (a video by its suffix, an image otherwise), or ``(T, H, W, 3)`` frame arrays.
    Videos are read with :func:`vtr.media.load_video` (``num_frames`` uniformly sampled frames).
    """
    from vtr.media import load_image, load_video

    media = Media()
    for item in flatten(visuals):
        if isinstance(item, Image.Image):
            media.images.append(item.convert("RGB"))
            media.kinds.append("image")
        elif isinstance(item, (str, Path)) and Path(item).suffix.lower() in VIDEO_SUFFIXES:
            media.videos.append(load_video(item, num_frames))
            media.kinds.append("video")
        elif isinstance(item, (str, Path)):
            media.images.append(load_image(item))
            media.kinds.append("image")
        elif isinstance(item, np.ndarray) and item.ndim == 4:
            media.videos.append(item)
            media.kinds.append("video")
        else:
            raise ValueError(f"doc_to_visual returned a {type(item).__name__}; vtr's lmms-eval model takes PIL images, "
                             f"image or video paths ({', '.join(VIDEO_SUFFIXES)}) and (T, H, W, 3) frame arrays")
    return media


def flatten(visuals: Any) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    out = []
    for item in visuals:
        out += list(item) if isinstance(item, (list, tuple)) else [item]
    return out


def media_token(processor, kind: str) -> str:
    return getattr(processor, f"{kind}_token", None) or ("<image>" if kind == "image" else "<video>")


def build_prompt(processor, question: str, kinds: list[str]) -> str:
    """The generation prompt for ``question`` about visuals of ``kinds`` (``["image", "image"]``, ``["video"]``).

    Media tokens already written in ``question`` are respected: none are added for the kinds it holds.
    """
    missing = [k for k in kinds if media_token(processor, k) not in question]
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if template:
        content = [{"type": k} for k in missing] + [{"type": "text", "text": question}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    vocab = processor.tokenizer.get_vocab()
    start, end = VISION_WRAP if all(t in vocab for t in VISION_WRAP) else ("", "")
    tokens = [f"{start}{media_token(processor, k)}{end}" for k in missing]
    media = ("".join(tokens) if start else " ".join(tokens)) + ("\n" if tokens and not start else "")
    return f"USER: {media}{question} ASSISTANT:"
