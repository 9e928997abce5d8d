"""``python -m vtr.demo`` runs end to end on its embedded defaults and writes the overlays."""
from __future__ import annotations

import numpy as np
from PIL import Image

from vtr import demo


def check_overlays(folder, side: int):
    for keep in demo.KEEPS:
        path = folder / f"overlay_fastervlm_keep{keep}.png"
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            pixels = np.asarray(picture.convert("RGB"))
            assert pixels.shape[:2] == (side, side) and pixels.std() > 0
    assert (folder / "overlays.png").exists()


def test_demo_random_weights_writes_overlays_and_says_so(tmp_path, capsys):
    assert demo.main(["--random", "--out", str(tmp_path)]) == 0  # nonzero would mean unpatch changed the output
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "gibberish" in out
    assert "576 -> 58" in out and "576 -> 144" in out
    check_overlays(tmp_path, 672)


def test_demo_default_uses_the_trained_checkpoint(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "trained on procedural shapes" in out and "RANDOM" not in out
    assert "144 -> 36" in out and "144 -> 14" in out
    unpatched = next(line for line in out.splitlines() if line.startswith("unpatched"))
    assert unpatched.count("|") >= 3 and "✓" in unpatched  # several questions, answered and marked
    check_overlays(tmp_path, 384)  # 96 px input shown at 4×


def test_vtr_demo_command_passes_the_demo_options_through(tmp_path, capsys):
    from vtr.cli import main

    assert main(["demo", "--random", "--out", str(tmp_path)]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    check_overlays(tmp_path, 672)


def test_vtr_demo_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from vtr.cli import main

    assert main(["demo", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0] and "nowhere" in err[0]
