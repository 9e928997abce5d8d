"""The shipped checkpoint ``vtr/shapes/tiny-llava-shapes``: loads like any model, scores what it recorded, and
pruning by [CLS] attention beats random pruning on it (a regression test for selection quality).

The recorded numbers are in ``vtr/shapes/tiny-llava-shapes/eval.json`` (``test_slices``), written by
``python -m benchmarks.accuracy --record``. Weights and data are fixed, so the scores are deterministic up to
floating-point summation order across machines; one question of slack is allowed for that.
"""
from __future__ import annotations

import json

import pytest

from benchmarks.accuracy import MODEL, SLICE_BATCH, SLICES, load, score
from vtr.shapes import test_set as held_out_set


@pytest.fixture(scope="module")
def shipped():
    import torch

    torch.set_num_threads(2)
    model, processor = load()
    recorded = json.loads((MODEL / "eval.json").read_text())
    return model, processor, recorded


def test_checkpoint_is_stock_small_and_reaches_its_recorded_accuracy(shipped):
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    model, processor, recorded = shipped
    assert type(model) is LlavaForConditionalGeneration
    assert isinstance(processor, LlavaProcessor) and isinstance(processor.image_processor, CLIPImageProcessor)
    assert (MODEL / "model.safetensors").stat().st_size <= 20 * 2**20
    assert model.config.image_seq_length == 144 and model.config.vision_config.patch_size == 8
    _, _, n = SLICES["unpruned"]
    got = score(model, processor, held_out_set()[:n], batch=SLICE_BATCH)
    want = recorded["test_slices"]["unpruned"]["accuracy"]
    assert got["accuracy"] == pytest.approx(want, abs=1 / n + 1e-9)
    assert got["accuracy"] > recorded["majority"]["overall"]["accuracy"]  # it learned something


def test_fastervlm_beats_random_at_keep_0_1(shipped):
    model, processor, recorded = shipped
    got = {}
    for name in ("fastervlm@0.1", "random@0.1"):
        reducer, keep, n = SLICES[name]
        got[name] = score(model, processor, held_out_set()[:n], reducer, keep, SLICE_BATCH)
        assert got[name]["visual_tokens_kept"] == 14
        assert got[name]["accuracy"] == pytest.approx(recorded["test_slices"][name]["accuracy"], abs=1 / n + 1e-9)
    assert got["fastervlm@0.1"]["accuracy"] > got["random@0.1"]["accuracy"]


def test_adaptive_reducers_meet_keep_uncalibrated_on_images_never_tested(shipped):
    """``atp`` spends ``keep`` as its mean layer share out of the box (``budget="sample"``): the benchmark does not
    tune it, and the share the decoder layers process on the test images follows ``keep`` (here 0.5 vs 1.0)."""
    from benchmarks.accuracy import run_all

    model, processor, _ = shipped
    items = held_out_set()[:20]
    results = run_all(model, processor, items, batch=20, reducers=["atp", "fastervlm"], keeps=(1.0, 0.5))
    atp = results["reducers"]["atp"]
    for keep in ("1.0", "0.5"):
        assert "calibration" not in atp[keep]
        assert atp[keep]["layer_share"] == pytest.approx(float(keep), abs=0.05)
    assert "calibration" not in results["reducers"]["fastervlm"]["0.5"]  # fixed-keep reducers are not tuned
    assert results["reducers"]["fastervlm"]["0.5"]["visual_tokens_kept"] == 72


def test_table_plot_and_card_are_generated_from_the_results(tmp_path):
    """The report is a pure function of the results: every reducer and keep appears, identical curves are
    labelled as such, and the published FasterVLM anchor is printed next to the measured retention."""
    from benchmarks.accuracy import card_markdown, markdown, plot

    types = ("colour_of_shape", "shape_of_colour", "exists", "count", "relpos")

    def row(acc, kept, share):
        return {"accuracy": acc, "retention": acc / 0.8, "visual_tokens_kept": kept, "layer_share": share, "n": 10,
                "per_type": dict.fromkeys(types, acc)}

    curve = {k: row(a, 144 * float(k), float(k)) for k, a in (("1.0", 0.8), ("0.25", 0.7), ("0.1", 0.6), ("0.05", 0.5))}
    results = {"unpruned": row(0.8, 144, 1.0), "skipped": {"quota": "ValueError: video only"},
               "reducers": {"fastervlm": curve, "vtc_cls": dict(curve),
                            "atp": {k: {**r, "calibration": {"achieved": 0.32, "reached": k == "1.0"}}
                                    for k, r in curve.items()}}}
    majority = {"overall": {"accuracy": 0.3}, **{t: {"accuracy": 0.3} for t in types}}
    md = markdown(results, majority, {"date": "today"})
    assert md.count("| fastervlm |") == 4 and md.count("| atp |") == 4 and "`quota`: ValueError" in md
    assert "keep 0.1: 75.0% here vs 94.24% published" in md
    assert "At keep 0.25, 0.1, 0.05 the target is below what `atp` can reach" in md
    card = card_markdown(results)
    assert "| fastervlm | 0.800 | 0.700 | 0.600 | 0.500 |" in card and "keep 0.1 (14)" in card
    png = plot(results, majority, tmp_path / "accuracy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
