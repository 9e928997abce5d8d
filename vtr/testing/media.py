"""Random images and prompts for tiny-model inputs."""
from __future__ import annotations

import numpy as np
from PIL import Image

PROMPTS = [
    "what is in the image?",
    "describe the picture in detail please",
    "is there a red circle above the square? how many objects are there",
    "what colour is the shape on the left",
]


def random_image(rng: np.random.Generator, min_side: int = 200, max_side: int = 480) -> Image.Image:
    """A random RGB image of random size: smooth blobs plus noise, so attention is not uniform."""
    h, w = (int(x) for x in rng.integers(min_side, max_side, size=2))
    coarse = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-30, 30, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def random_frames(rng: np.random.Generator, n_frames: int = 8, side: int = 240) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames of a random image drifting sideways (a tiny "video")."""
    base = np.asarray(random_image(rng, side, side + 1), dtype=np.uint8)
    return np.stack([np.roll(base, shift=4 * t, axis=1) for t in range(n_frames)])


def chat_prompt(question: str, image_token: str = "<image>") -> str:
    """LLaVA-1.5's conversation format for one image and one question."""
    return f"USER: {image_token}\n{question} ASSISTANT:"


def row_prompt(seed: int) -> str:
    return PROMPTS[seed % len(PROMPTS)]
