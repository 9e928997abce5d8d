"""The ``vtr`` command line, image loading and the kept-patch overlay.

CLI runs call ``vtr.cli.main`` in-process (a tiny model loads in about a second); one subprocess
run checks the real ``python -m vtr.cli`` boundary: exit status 2, one line, no traceback.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vtr.cli import build_prompt, main
from vtr.media import load_image
from vtr.media.overlay import denormalize, kept_mask, overlay, side_by_side
from vtr.testing import tiny_model

PROMPT = "what is in the image?"
# OpenAI CLIP normalisation, written out here so the overlay test does not trust the code under test.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The llava-hf LLaVA-1.5 chat template, shortened: user turns get the image before the text.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llava")
    model, processor = tiny_model("llava")
    processor.chat_template = LLAVA_TEMPLATE  # real checkpoints ship one; the prompt path must use it
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- vtr reducers ----------------------------------------------------------------------------------

def test_reducers_lists_names_with_descriptions(capsys):
    code, out, _ = run_cli(capsys, "reducers")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert {"fastervlm", "random"} <= set(lines)
    assert "[CLS]" in lines["fastervlm"]  # the one-line description follows the name


# -- vtr run ---------------------------------------------------------------------------------------

def test_run_tiny_model_prints_answer_counts_and_writes_overlay(capsys, image_file, tmp_path):
    png = tmp_path / "sub" / "kept.png"
    code, out, err = run_cli(capsys, "run", "--model", "tiny:llava", "--image", image_file, "--prompt", PROMPT,
                             "--keep", "0.1", "--max-new-tokens", "4", "--overlay", str(png))
    assert code == 0, err
    assert "answer:" in out
    assert "576 -> 58" in out  # 24×24 patches, 10% rounded half up
    assert "prefill FLOPs ratio" in out and "vision" in out and "generate total" in out
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        assert picture.size == (672, 672)  # the 336-px model input, drawn at scale 2


def test_run_keep_count_and_random_reducer(capsys, image_file):
    code, out, err = run_cli(capsys, "run", "--model", "tiny:llava", "--image", image_file, "--prompt", PROMPT,
                             "--reducer", "random", "--keep", "58", "--seed", "3", "--positions", "renumber",
                             "--max-new-tokens", "2")
    assert code == 0, err
    assert "576 -> 58" in out and "seed=3" in out and "positions=renumber" in out


def test_run_local_model_folder(capsys, image_file, saved_model):
    code, out, err = run_cli(capsys, "run", "--model", saved_model, "--image", image_file, "--prompt", PROMPT,
                             "--keep", "0.25", "--max-new-tokens", "3")
    assert code == 0, err
    assert "576 -> 144" in out and "answer:" in out


def test_build_prompt_uses_chat_template_else_plain_format():
    _, processor = tiny_model("llava")
    assert build_prompt(processor, "hi?") == "USER: <image>\nhi? ASSISTANT:"  # vtr.testing.chat_prompt
    assert build_prompt(processor, "USER: <image> x ASSISTANT:") == "USER: <image> x ASSISTANT:"
    processor.chat_template = LLAVA_TEMPLATE.replace("USER: ", "U: ")
    assert build_prompt(processor, "hi?") == "U: <image>\nhi? ASSISTANT:"


def test_run_prompt_with_image_token_is_used_as_is(capsys, image_file):
    code, out, err = run_cli(capsys, "run", "--model", "tiny:llava", "--image", image_file,
                             "--prompt", "USER: <image>\nwhat? ASSISTANT:", "--max-new-tokens", "2")
    assert code == 0, err
    assert "576 -> 58" in out  # exactly one image's placeholders: the prompt was not wrapped again


@pytest.mark.parametrize(
    "override, argument",
    [
        (["--image", "/definitely/missing.png"], "--image"),
        (["--reducer", "nope"], "--reducer"),
        (["--keep", "1.5"], "--keep"),
        (["--keep", "0"], "--keep"),
        (["--keep", "-3"], "--keep"),
        (["--keep", "lots"], "--keep"),
        (["--model", "/definitely/missing-model"], "--model"),
        (["--model", "tiny:nosuchfamily"], "--model"),
        (["--positions", "shuffled"], "--positions"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_argument(capsys, image_file, override, argument):
    args = {"--model": "tiny:llava", "--image": image_file, "--prompt": PROMPT}
    extra = []
    for flag, value in zip(override[::2], override[1::2]):
        if flag in args:
            args[flag] = value
        else:
            extra += [flag, value]
    argv = ["run", *[x for pair in args.items() for x in pair], *extra]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vtr: error:"), err
    assert argument in lines[0]
    assert "answer:" not in out


def test_bad_model_folder_and_unreadable_image(capsys, image_file, tmp_path):
    code, _, err = run_cli(capsys, "run", "--model", str(tmp_path), "--image", image_file, "--prompt", PROMPT)
    assert code == 2 and "--model" in err and str(tmp_path) in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "run", "--model", "tiny:llava", "--image", str(broken), "--prompt", PROMPT)
    assert code == 2 and "--image" in err and str(broken) in err


def test_module_entry_point_reports_bad_input_without_traceback(image_file):
    result = subprocess.run(
        [sys.executable, "-m", "vtr.cli", "run", "--model", "tiny:llava", "--image", image_file,
         "--prompt", PROMPT, "--keep", "2.0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--keep" in result.stderr


# -- vtr.media ----------------------------------------------------------------------------------------

def test_load_image_converts_to_rgb_and_names_bad_paths(tmp_path):
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (5, 4), (10, 20, 30, 128)).save(rgba)
    image = load_image(rgba)
    assert image.mode == "RGB" and image.size == (5, 4)
    for bad in (tmp_path / "missing.png", tmp_path):
        with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")):
            load_image(bad)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match="junk.png"):
        load_image(junk)


# -- vtr.media.overlay -----------------------------------------------------------------------------------

def normalise(rgb: np.ndarray) -> torch.Tensor:
    """What a CLIP image processor does to an ``(H, W, 3)`` uint8 image: ``(3, H, W)`` float."""
    x = torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def cells(height: int, width: int, grid: tuple[int, int]):
    """Independent reference for the patch geometry: pixel slices of each cell, raster order."""
    ys = np.linspace(0, height, grid[0] + 1).round().astype(int)
    xs = np.linspace(0, width, grid[1] + 1).round().astype(int)
    return [(slice(ys[r], ys[r + 1]), slice(xs[c], xs[c + 1])) for r in range(grid[0]) for c in range(grid[1])]


@pytest.mark.parametrize("size, grid", [((56, 56), (4, 4)), ((30, 40), (3, 4))])
def test_overlay_keeps_source_pixels_and_darkens_pruned(size, grid):
    rng = np.random.default_rng(1)
    source = rng.integers(20, 256, size=(*size, 3), dtype=np.uint8)  # no black pixels: darker is strict
    kept = [0, 5, grid[0] * grid[1] - 1]
    picture = np.asarray(overlay(normalise(source), grid, torch.tensor(kept), mean=CLIP_MEAN, std=CLIP_STD))
    assert picture.shape == source.shape
    luma = np.array([0.299, 0.587, 0.114])
    for index, (rows, cols) in enumerate(cells(*size, grid)):
        got, want = picture[rows, cols].astype(int), source[rows, cols].astype(int)
        if index in kept:
            assert np.abs(got - want).max() <= 1  # float32 normalise/de-normalise round trip
        else:
            assert (got @ luma < want @ luma).all()
            assert (got.max(-1) - got.min(-1) <= 1).all()  # grey


def test_overlay_outline_leaves_kept_interiors_and_saves_png(tmp_path):
    source = np.full((28, 28, 3), 200, dtype=np.uint8)
    path = tmp_path / "o.png"
    picture = overlay(source, (2, 2), [3], path, outline=(255, 0, 0), scale=2)
    assert picture.size == (56, 56)
    array = np.asarray(picture)
    assert (array[30:54, 30:54] == 200).all()  # inside the kept cell (rows/cols 28..55)
    assert (array[28, 28:56] == (255, 0, 0)).all()  # its top edge faces a pruned cell
    assert (array[:26, :26] == 50).all()  # pruned: 0.25 × grey 200
    with Image.open(path) as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved), array)


def test_overlay_rejects_bad_input():
    values = normalise(np.zeros((14, 14, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="mean"):
        overlay(values, (1, 1), [0])
    with pytest.raises(ValueError, match="kept"):
        overlay(values, (1, 1), [1], mean=CLIP_MEAN, std=CLIP_STD)
    with pytest.raises(ValueError, match="grid"):
        kept_mask((0, 3), [0])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        denormalize(torch.zeros(2, 3, 4, 4), CLIP_MEAN, CLIP_STD)


def test_side_by_side_places_images_in_a_row(tmp_path):
    images = [Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (30, 15), (0, 0, 255))]
    path = tmp_path / "row.png"
    canvas = side_by_side(images, ["a", "b"], path)
    assert canvas.width >= 50 and canvas.height >= 15 and path.exists()


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> str:
    """A 20-frame mpeg4 clip written with PyAV."""
    import av

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    for i in range(20):
        frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 10, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return str(path)


@pytest.mark.parametrize("family, tokens, views", [("video_llava", "2056 -> 216", 8), ("qwen2_vl", "-> ", 4)])
def test_run_video(capsys, video_file, tmp_path, family, tokens, views):
    png = tmp_path / "frames.png"
    code, out, err = run_cli(capsys, "run", "--model", f"tiny:{family}", "--video", video_file, "--prompt", PROMPT,
                             "--frames", "8", "--max-new-tokens", "2", "--overlay", str(png))
    assert code == 0, err
    assert tokens in out and f"overlay: {png} ({views} views)" in out  # one picture per frame (group)
    assert png.exists()


def test_video_to_an_image_model_or_missing_video_exits_2(capsys, video_file, image_file):
    code, _, err = run_cli(capsys, "run", "--model", "tiny:llava", "--video", video_file, "--prompt", PROMPT)
    assert code == 2 and "--video" in err and "images only" in err and "video_llava" in err
    code, _, err = run_cli(capsys, "run", "--model", "tiny:video_llava", "--video", "missing.mp4", "--prompt", PROMPT)
    assert code == 2 and "--video" in err and "missing.mp4" in err
    code, _, err = run_cli(capsys, "run", "--model", "tiny:llava", "--video", video_file, "--image", image_file,
                           "--prompt", PROMPT)
    assert code == 2 and "not allowed with" in err
