"""How many frames to read from a long video: QuoTA's base count plus extra frames per hour.

The reference (``process_video_prune`` in MAC-AutoML/QuoTA) samples
``T = max_frames_num + int(hours · additional_frames)`` frames, 96 + 64 per hour by default, spread
evenly over the video (``np.linspace``, what :func:`vtr.media.load_video` does).

Mind the model's context: Video-LLaVA's LLM has 4,096 positions and 257 tokens per frame, so with
``positions="original"`` only ~15 frames fit; the reduction shortens the LLM input, not its position
range (use ``positions="renumber"`` there, or a long-context model such as Qwen2-VL).
"""
from __future__ import annotations

import math
import os

import numpy as np

from vtr.media.video import VideoInfo, load_video, video_info


def quota_frame_count(duration_s: float, base: int = 96, per_hour: int = 64, multiple_of: int = 1) -> int:
    """``base + int(duration_s / 3600 · per_hour)`` frames, rounded up to a multiple of ``multiple_of``
    (2 for Qwen2-VL, whose frame groups hold 2 frames).

    Raises ``ValueError`` for a negative or non-finite duration, ``base < 1``, ``per_hour < 0`` or
    ``multiple_of < 1``.
    """
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s) \
            or duration_s < 0:
        raise ValueError(f"duration_s must be a finite number of seconds >= 0, got {duration_s!r}")
    for name, value, least in (("base", base, 1), ("per_hour", per_hour, 0), ("multiple_of", multiple_of, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    count = base + int(duration_s / 3600.0 * per_hour)
    return -(-count // multiple_of) * multiple_of


def load_video_for_quota(path: str | os.PathLike, base: int = 96, per_hour: int = 64, multiple_of: int = 1,
                         backend: str | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Read the frames QuoTA would read from the video at ``path``.

    Returns ``(frames, info)``: ``(T, H, W, 3)`` uint8 RGB frames in time order, with
    ``T = quota_frame_count(info.duration, base, per_hour, multiple_of)``, and the file's
    :class:`~vtr.media.video.VideoInfo`. Same errors as :func:`vtr.media.load_video`.
    """
    info = video_info(path, backend=backend)
    count = quota_frame_count(info.duration, base, per_hour, multiple_of)
    return load_video(path, num_frames=count, backend=backend), info
