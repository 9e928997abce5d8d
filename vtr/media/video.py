"""Reading video files into uniformly sampled RGB frames, with errors that name the file.

Two decoders give the same frames: decord (the default, fast random access) and PyAV (the fallback
when decord is not importable). Both count frames in presentation order and sample the same
indices, so a benchmark run does not depend on which one is installed.

Sampling rule (the one Video-LLaVA's and QuoTA's/LLaVA-NeXT's decord loaders use)::

    indices = np.linspace(0, n_frames - 1, num_frames, dtype=int)

i.e. ``num_frames`` evenly spaced points from the first to the last frame, *truncated* (floored)
to integers; the first and last frames are always included. When the file has fewer than
``num_frames`` frames, some frames repeat (the output always has ``num_frames`` frames, which is
what a model with a fixed frame count needs).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS = ("decord", "pyav")


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`video_info` reports about a file.

    Attributes:
        num_frames: decodable video frames, in presentation order.
        fps: average frame rate (frames per second).
        duration: seconds, ``num_frames / fps``.
    """

    num_frames: int
    fps: float
    duration: float


def sample_indices(n_frames: int, num_frames: int) -> np.ndarray:
    """The frame indices :func:`load_video` reads: ``linspace(0, n-1, num_frames)`` floored. ``(num_frames,)`` int64."""
    return np.linspace(0, n_frames - 1, num_frames, dtype=np.int64)


def load_video(path: str | os.PathLike, num_frames: int = 8, backend: str | None = None) -> np.ndarray:
    """Read ``num_frames`` uniformly sampled frames of the video at ``path``.

    Args:
        path: a video file (mp4, avi, mkv, webm, ... whatever FFmpeg reads).
        num_frames: how many frames to return (Video-LLaVA uses 8); see the module docstring for
            which ones.
        backend: ``"decord"``, ``"pyav"``, or ``None`` for decord when it is importable and PyAV
            otherwise.
    Returns:
        ``(num_frames, H, W, 3)`` uint8 RGB frames, in time order.

    Raises ``ValueError`` naming the path when the file is missing, a directory, empty, not a
    readable video, or has no video frames; ``ValueError`` for ``num_frames < 1`` or an unknown
    backend; ``ImportError`` when the requested backend is not installed.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    file = _checked_file(path)
    reader = _READERS[_resolve_backend(backend)]
    return reader(file, str(path), int(num_frames))


def video_info(path: str | os.PathLike, backend: str | None = None) -> VideoInfo:
    """Frame count, frame rate and duration of the video at ``path`` (no frame is decoded with decord;
    PyAV counts packets, which is cheap next to decoding). Same errors as :func:`load_video`."""
    file = _checked_file(path)
    if _resolve_backend(backend) == "decord":
        reader = _open_decord(file, str(path))
        n, fps = len(reader), float(reader.get_avg_fps())
    else:
        with _open_pyav(file, str(path)) as container:
            stream = container.streams.video[0]
            n, fps = _count_pyav_frames(container, stream), float(stream.average_rate or 0)
    if n == 0:
        raise ValueError(f"video file {str(path)!r} has no video frames")
    return VideoInfo(num_frames=n, fps=fps, duration=n / fps if fps > 0 else 0.0)


# -- helpers ----------------------------------------------------------------------------------------
def _checked_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike naming a video file, got {type(path).__name__}")
    file = Path(path).expanduser()
    if not file.exists():
        raise ValueError(f"video file {str(path)!r} does not exist")
    if file.is_dir():
        raise ValueError(f"video path {str(path)!r} is a directory, not a video file")
    if file.stat().st_size == 0:
        raise ValueError(f"video file {str(path)!r} is empty (0 bytes)")
    return file


def _resolve_backend(backend: str | None) -> str:
    if backend is None:
        try:
            import decord  # noqa: F401
        except ImportError:
            return "pyav"
        return "decord"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (decord if installed, else pyav), got {backend!r}")
    return backend


def _open_decord(file: Path, shown: str):
    try:
        import decord
    except ImportError as error:
        raise ImportError("backend='decord' needs the decord package (pip install decord); "
                          "or pass backend='pyav'") from error
    try:
        return decord.VideoReader(str(file), ctx=decord.cpu(0))
    except (RuntimeError, decord.DECORDError) as error:  # decord reports bad files as RuntimeError/DECORDError
        # decord prefixes its C++ source location ("[time] .../video_reader.cc:83: "); keep the reason
        reason = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(error).strip().splitlines()[0])
        raise ValueError(f"cannot read {shown!r} as a video (decord): {reason}") from None


def _read_decord(file: Path, shown: str, num_frames: int) -> np.ndarray:
    reader = _open_decord(file, shown)
    n = len(reader)
    if n == 0:
        raise ValueError(f"video file {shown!r} has no video frames")
    # decord seeks to the key frame before each index and decodes forward, so the frames match a
    # sequential decode (checked against PyAV in tests/test_video_io.py).
    return reader.get_batch(sample_indices(n, num_frames).tolist()).asnumpy()


def _open_pyav(file: Path, shown: str):
    try:
        import av
    except ImportError as error:
        raise ImportError("backend='pyav' needs the av package (pip install av); or pass backend='decord'") from error
    try:
        container = av.open(str(file))
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"cannot read {shown!r} as a video (PyAV): {error}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"video file {shown!r} has no video stream")
    return container


def _count_pyav_frames(container, stream) -> int:
    """Frames of ``stream``, counted from its packets (the container's frame count can be 0 or wrong).
    Leaves the container rewound."""
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)  # size 0: flush packets
    container.seek(0)
    return count


def _read_pyav(file: Path, shown: str, num_frames: int) -> np.ndarray:
    import av

    with _open_pyav(file, shown) as container:
        stream = container.streams.video[0]
        n = _count_pyav_frames(container, stream)
        if n == 0:
            raise ValueError(f"video file {shown!r} has no video frames")
        indices = sample_indices(n, num_frames)
        wanted = set(indices.tolist())
        # Decode sequentially (frames come out in presentation order) and keep the wanted ones;
        # one pass up to the last wanted frame, as the transformers Video-LLaVA example does.
        decoded: dict[int, np.ndarray] = {}
        try:
            for ordinal, frame in enumerate(container.decode(stream)):
                if ordinal in wanted:
                    decoded[ordinal] = frame.to_ndarray(format="rgb24")
                if ordinal >= indices[-1]:
                    break
        except av.error.FFmpegError as error:
            raise ValueError(f"cannot decode {shown!r} as a video (PyAV): {error}") from None
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise ValueError(f"video file {shown!r}: frames {missing[:5]} could not be decoded ({n} frames announced)")
    return np.stack([decoded[i] for i in indices.tolist()])


_READERS = {"decord": _read_decord, "pyav": _read_pyav}
