"""User media in and pictures out: images (:func:`load_image`), videos (:func:`load_video`,
:func:`video_info`; decord, or PyAV when decord is missing) and kept-patch overlays
(:mod:`vtr.media.overlay`)."""
from vtr.media.images import CLIP_MEAN, CLIP_STD, load_image
from vtr.media.video import VideoInfo, load_video, video_info

__all__ = ["load_image", "CLIP_MEAN", "CLIP_STD", "load_video", "video_info", "VideoInfo"]
