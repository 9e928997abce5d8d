"""``python -m vtr.demo`` runs end to end on its embedded defaults and writes the overlays."""
from __future__ import annotations

import numpy as np
from PIL import Image

from vtr import demo


def test_demo_writes_overlays_and_says_weights_are_random(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path)]) == 0  # nonzero would mean unpatch changed the output
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "gibberish" in out
    assert "576 -> 58" in out and "576 -> 144" in out
    for keep in demo.KEEPS:
        path = tmp_path / f"overlay_fastervlm_keep{keep}.png"
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            pixels = np.asarray(picture.convert("RGB"))
            assert pixels.shape[:2] == (672, 672) and pixels.std() > 0
    assert (tmp_path / "overlays.png").exists()
