"""vtr.media.video: both decoders give the same, uniformly sampled frames, and bad files get clear errors."""
import sys

import numpy as np
import pytest

from vtr.media.video import load_video, video_info

N_FRAMES, FPS, BLOCK, BITS = 30, 10, 32, 5


def frame_with_number(i: int) -> np.ndarray:
    """A grey frame whose 5 large blocks spell ``i`` in binary (white = 1), robust to lossy coding."""
    image = np.full((BLOCK * 2, BLOCK * BITS, 3), 96, dtype=np.uint8)
    for bit in range(BITS):
        image[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if (i >> bit) & 1 else 0
    image[BLOCK:] = (i * 8) % 256  # the lower half changes too, so consecutive frames differ everywhere
    return image


def number_of(frame: np.ndarray) -> int:
    inner = slice(BLOCK // 4, 3 * BLOCK // 4)  # away from block edges, where coding blurs
    centres = [frame[inner, b * BLOCK:(b + 1) * BLOCK][:, inner].mean() for b in range(BITS)]
    return sum(1 << b for b, c in enumerate(centres) if c > 128)


def write_video(path, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = BLOCK * BITS, BLOCK * 2, "yuv420p"
        for i in range(N_FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_with_number(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module", params=["libx264", "mpeg4"])  # libx264 uses B-frames: decode order != display order
def video_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / f"numbers_{request.param}.mp4"
    write_video(path, request.param)
    return path


# Expected indices written out by hand from the rule floor(linspace(0, n-1, k)), not computed by vtr.
EXPECTED = {1: [0], 2: [0, 29], 8: [0, 4, 8, 12, 16, 20, 24, 29], 30: list(range(30)),
            40: [int(np.floor(j * 29 / 39)) for j in range(40)]}


@pytest.mark.parametrize("num_frames", sorted(EXPECTED))
def test_backends_agree_and_sample_uniformly(video_file, num_frames):
    by_decord = load_video(video_file, num_frames, backend="decord")
    by_pyav = load_video(video_file, num_frames, backend="pyav")
    assert by_decord.shape == (num_frames, BLOCK * 2, BLOCK * BITS, 3) and by_decord.dtype == np.uint8
    assert np.array_equal(by_decord, by_pyav)
    assert [number_of(f) for f in by_decord] == EXPECTED[num_frames]


def test_default_backend_is_decord(video_file):
    assert np.array_equal(load_video(video_file, 8), load_video(video_file, 8, backend="decord"))
    assert np.array_equal(load_video(str(video_file), 8), load_video(video_file, 8, backend="decord"))


def test_video_info(video_file):
    for backend in ("decord", "pyav"):
        info = video_info(video_file, backend=backend)
        assert (info.num_frames, info.fps, info.duration) == (N_FRAMES, FPS, N_FRAMES / FPS)


def test_pyav_fallback_when_decord_is_missing(video_file, monkeypatch):
    expected = load_video(video_file, 8, backend="pyav")
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    assert np.array_equal(load_video(video_file, 8), expected)
    assert video_info(video_file).num_frames == N_FRAMES
    with pytest.raises(ImportError, match="pip install decord.*backend='pyav'"):
        load_video(video_file, 8, backend="decord")


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_unreadable_files_raise_value_error_naming_the_path(tmp_path, backend):
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 10)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.mp4"
    for path, why in [(text, "cannot read"), (empty, "empty"), (missing, "does not exist"), (tmp_path, "directory")]:
        with pytest.raises(ValueError, match=why) as error:
            load_video(path, 8, backend=backend)
        assert str(path) in str(error.value)
        with pytest.raises(ValueError, match=why):
            video_info(path, backend=backend)


def test_audio_only_file_has_no_video(tmp_path):
    import av

    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    for backend in ("decord", "pyav"):
        with pytest.raises(ValueError, match="audio.mp4"):
            load_video(path, 8, backend=backend)


@pytest.mark.parametrize("num_frames", [0, -1, 2.5, True, "8"])
def test_bad_num_frames(video_file, num_frames):
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        load_video(video_file, num_frames)


def test_unknown_backend_lists_the_allowed_ones(video_file):
    with pytest.raises(ValueError, match="backend must be one of \\('decord', 'pyav'\\)"):
        load_video(video_file, 8, backend="opencv")
    with pytest.raises(ValueError, match="backend must be one of"):
        video_info(video_file, backend="torchvision")
