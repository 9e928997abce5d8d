"""Reading user images with errors that name the file instead of a raw PIL traceback."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["load_image", "CLIP_MEAN", "CLIP_STD"]

#: OpenAI CLIP's pixel normalisation (per RGB channel), used by every CLIP-tower processor vtr builds
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an RGB :class:`PIL.Image.Image`, fully decoded.

    EXIF orientation is applied, so a phone photo is seen the way its viewer shows it. Palette,
    greyscale and RGBA files are converted to RGB, which is what every processor expects.

    Raises ``ValueError`` naming the path when it is missing, a directory, or not a readable image.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise ValueError(f"image file {str(path)!r} does not exist")
    if file.is_dir():
        raise ValueError(f"image path {str(path)!r} is a directory, not an image file")
    try:
        with Image.open(file) as image:
            # load() inside the try: PIL opens lazily, so truncated files fail only on decode.
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # SyntaxError: some PIL plugins on bad headers
        raise ValueError(f"cannot read {str(path)!r} as an image: {error}") from None
