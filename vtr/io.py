"""Reading user media with errors that name the file instead of a raw PIL traceback.

Images: :func:`load_image`. Videos: :func:`load_video` and :func:`video_info`, from :mod:`vtr.video`
(uniform frame sampling; decord by default, PyAV as the fallback).
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vtr.video import VideoInfo, load_video, video_info

__all__ = ["load_image", "load_video", "video_info", "VideoInfo"]


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
