"""``vtr run`` for every registered reducer on every family (and input kind), with ``--overlay``.

Each run either answers (exit 0, counts printed, the overlay PNG written with one picture per view) or,
where the reducer does not take that family or input, exits 2 with one ``vtr: error:`` line — never a
traceback. Runs are in-process on the built-in tiny models, 1 new token each.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import vtr
from vtr.cli import main
from vtr.registry import get_spec

CASES = [("llava", "image"), ("llava_next", "image"), ("qwen2_vl", "image"), ("qwen2_vl", "video"),
         ("video_llava", "image"), ("video_llava", "video")]
VIDEO_ONLY = {"quota"}
#: views each overlay shows for the media of this file: images 1 (LLaVA-NeXT: thumbnail + 4 crops), video frames
VIEWS = {("llava", "image"): 1, ("llava_next", "image"): 5, ("qwen2_vl", "image"): 1, ("qwen2_vl", "video"): 4,
         ("video_llava", "image"): 1, ("video_llava", "video"): 8}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import av

    folder = tmp_path_factory.mktemp("media")
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)).save(image)
    video = folder / "clip.mp4"
    container = av.open(str(video), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    for i in range(16):
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 12, np.uint8), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return {"image": str(image), "video": str(video)}


def supported(reducer: str, family: str, kind: str) -> bool:
    families = get_spec(reducer).reducer_class.families
    return (families is None or family in families) and (kind == "video" or reducer not in VIDEO_ONLY)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("family, kind", CASES, ids=["-".join(c) for c in CASES])
def test_every_reducer_runs_or_refuses_in_one_line(capsys, media, tmp_path, family, kind):
    for reducer in vtr.list_reducers():
        png = tmp_path / f"{reducer}.png"
        code, out, err = run(capsys, "run", "--model", f"tiny:{family}", f"--{kind}", media[kind], "--prompt", "what?",
                             "--reducer", reducer, "--keep", "0.5", "--max-new-tokens", "1", "--overlay", str(png))
        assert "Traceback" not in err
        if not supported(reducer, family, kind):
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("vtr: error:"), (reducer, err)
            assert not png.exists()
            continue
        assert code == 0, (reducer, family, kind, err)
        assert "answer:" in out and "visual tokens:" in out
        assert f"({VIEWS[family, kind]} view" in out, (reducer, out)
        with Image.open(png) as picture:
            assert picture.format == "PNG"


def test_in_llm_overlay_draws_what_the_llm_kept(capsys, media, tmp_path):
    """fastv keeps half the visual tokens from layer 2 on: the overlay shows exactly that many patches kept."""
    png = tmp_path / "fastv.png"
    code, out, err = run(capsys, "run", "--model", "tiny:llava", "--image", media["image"], "--prompt", "what?",
                         "--reducer", "fastv", "--keep", "0.25", "--max-new-tokens", "1", "--overlay", str(png))
    assert code == 0, err
    with Image.open(png) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    # kept patches keep the photo's colours, pruned ones are grey: count the coloured 28-px cells (scale 2)
    cells = pixels.reshape(24, 28, 24, 28, 3)[:, 4:-4, :, 4:-4].astype(int)
    coloured = (np.abs(cells - cells.mean(axis=-1, keepdims=True)).max(axis=(1, 3, 4)) > 8).sum()
    assert coloured == 144


def test_unwritable_overlay_fails_before_the_model_runs(capsys, media, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        code, out, err = run(capsys, "run", "--model", "tiny:does_not_exist", "--image", media["image"], "--prompt", "x",
                             "--overlay", str(folder / "kept.png"))
    finally:
        os.chmod(folder, 0o700)
    # the overlay check comes first: the (bad) model is never loaded
    assert code == 2 and "--overlay" in err and "cannot write" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "run", "--model", "tiny:llava", "--image", media["image"], "--prompt", "x",
                       "--overlay", str(tmp_path))
    assert code == 2 and "--overlay" in err and "is a folder" in err
