"""The families benchmark's smoke run: every case and variant is measured, token counts follow each
family's geometry, the oracle computes what the patched model does (logits and LLM position ids),
FLOPs shrink with keep, and the markdown section is written once.

No timing assertions: the machine's speed is not under test, the benchmark's bookkeeping is.
"""
from __future__ import annotations

import json

import pytest

from benchmarks import families  # the repo root is on pytest's pythonpath (pyproject.toml)
from benchmarks.report import markers, replace_section
from vtr.ops.selection import keep_count

KEEPS = (0.25, 0.1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("families")
    md, js = out / "BENCHMARKS.md", out / "families.json"
    result = families.main(["--quick", "--md", str(md), "--json", str(js)], log=lambda *_: None)
    return dict(result=result, md=md, json=json.loads(js.read_text()))


def cases(run):
    return {c["case"]: c for c in run["json"]["cases"]}


def test_every_case_and_variant_is_timed(run):
    assert set(cases(run)) == set(families.CASES)
    for case in run["json"]["cases"]:
        rows = case["summary"]["rows"]
        got = {(r["variant"], r["keep"]) for r in rows}
        assert got == {("unpatched", None), ("vision", None)} | {(v, k) for v in ("fastervlm", "oracle") for k in KEEPS}
        rounds = case["timing"]["rounds"]
        assert rounds >= run["json"]["setup"]["repeats"]
        assert all(len(r["times_s"]) == len(r["foreign_cores"]) == rounds and r["min_s"] > 0 for r in rows)
    for key in ("cpu", "cores_usable", "torch", "transformers", "dtype", "attention", "date"):
        assert key in run["json"]["machine"]


def test_oracle_matches_patched_model(run):
    for case in run["json"]["cases"]:
        for keep, c in case["checks"].items():
            assert c["oracle_max_abs_logit_diff"] < 1e-4, (case["case"], keep)
            assert c["positions_equal"]
            assert c["prompt_tokens"] == case["prompt_tokens"] - (c["visual_tokens_in"] - c["visual_tokens"])
            assert c["kept_columns"] == sorted(set(c["kept_columns"]))
    for name in ("qwen2_vl_image", "qwen2_5_vl_image", "qwen2_5_vl_video", "qwen3_vl_image"):
        qwen = cases(run)[name]["checks"][str(KEEPS[0])]
        assert qwen["llm_position_shape"][0] == 3, name  # M-RoPE (t, h, w) rows reach the LLM
    for name, case in cases(run).items():
        for c in case["checks"].values():  # no [CLS] (Qwen towers, SigLIP): the substitute signal is noted
            assert c["adapted"] == (name not in ("llava_next", "video_llava")), name
            assert not c["adapted"] or any("adapted" in note for note in c["notes"]), name


def test_deepstack_levels_reach_the_llm_gathered(run):
    """Qwen3-VL: both calls hand the LLM one feature row per kept visual token at every DeepStack level,
    with the same mask; other families hand none."""
    c = cases(run)
    levels = len(run["json"]["setup"]["config"]["qwen3_vision"]["deepstack_visual_indexes"])
    for check in c["qwen3_vl_image"]["checks"].values():
        stack = check["deepstack"]
        assert stack["levels"] == levels and stack["masks_equal"]
        assert stack["rows"] == check["visual_tokens"] < c["qwen3_vl_image"]["visual_tokens"]
        assert stack["max_abs_diff"] < 1e-4
    assert all("deepstack" not in k for name, case in c.items() if name != "qwen3_vl_image"
               for k in case["checks"].values())


def test_token_counts_follow_each_geometry(run):
    c = cases(run)
    nxt = c["llava_next"]
    g = nxt["geometry"]
    rows, cols = g["crop_grid"]
    assert g["views"] == 1 + rows * cols
    for keep in KEEPS:
        check = nxt["checks"][str(keep)]
        assert check["surviving_patches"] == g["patch_tokens"]  # a square image: unpadding removes nothing
        newlines = nxt["visual_tokens"] - g["patch_tokens"]
        assert newlines == rows * (g["base"] // 14)  # one image_newline per row of the stitched crop grid
        per_view = [keep_count(keep, h * w) for h, w in check["view_grids"]]
        assert check["kept_patches_per_view"] == per_view
        assert check["visual_tokens"] == sum(per_view) + newlines  # newlines are always kept
    for name in ("qwen2_vl_image", "qwen2_vl_video", "qwen2_5_vl_image", "qwen2_5_vl_video", "qwen3_vl_image"):
        q = c[name]
        t, h, w = q["geometry"]["grid_thw"]
        assert q["visual_tokens"] == t * h * w // 4
        for keep in KEEPS:
            assert q["checks"][str(keep)]["visual_tokens"] == t * keep_count(keep, h * w // 4)
    assert c["qwen2_vl_video"]["geometry"]["frame_groups"] > 1
    assert c["qwen2_5_vl_video"]["geometry"]["frame_groups"] > 1
    assert c["qwen2_5_vl_video"]["geometry"]["second_per_grid_ts"] == 2 / run["json"]["setup"]["config"]["qwen25_fps"]
    assert c["qwen3_vl_image"]["geometry"]["patch_size"] == 16
    one = c["llava_onevision_image"]
    g = one["geometry"]
    rows, cols = g["crop_grid"]
    assert g["views"] == 1 + rows * cols
    for keep in KEEPS:
        check = one["checks"][str(keep)]
        base, stitched = check["view_grids"]  # the base view, then the crops stitched into one grid
        assert base == [g["grid"], g["grid"]] and stitched == [rows * g["grid"], cols * g["grid"]]  # square: no unpad
        newlines = one["visual_tokens"] - check["surviving_patches"]
        assert newlines == stitched[0]  # one image_newline per row of the stitched grid
        per_view = [keep_count(keep, h * w) for h, w in check["view_grids"]]
        assert check["kept_patches_per_view"] == per_view
        assert check["visual_tokens"] == sum(per_view) + newlines
    ov = c["llava_onevision_video"]
    frames, pooled = ov["geometry"]["frames"], ov["geometry"]["pooled"]
    assert pooled == -(-ov["geometry"]["grid"] // 2)  # 2×2 pooling, rounded up (27 → 14 on the real model)
    assert ov["visual_tokens"] == frames * pooled * pooled + 1  # + one image_newline after the last frame
    for keep in KEEPS:
        assert ov["checks"][str(keep)]["visual_tokens"] == frames * keep_count(keep, pooled * pooled) + 1
    gemma = c["gemma3_image"]
    g = gemma["geometry"]
    assert g["pooled"] * g["pool"] == g["grid"] and gemma["visual_tokens"] == g["pooled"] ** 2
    for keep in KEEPS:
        assert gemma["checks"][str(keep)]["visual_tokens"] == keep_count(keep, g["pooled"] ** 2)
    v = c["video_llava"]
    frames, grid = v["geometry"]["frames"], v["geometry"]["grid"]
    assert v["visual_tokens"] == frames * (grid * grid + 1)
    for keep in KEEPS:
        assert v["checks"][str(keep)]["visual_tokens"] == frames * (keep_count(keep, grid * grid) + 1)


def test_flops_and_cache_shrink_with_keep(run):
    for case in run["json"]["cases"]:
        rows = {(r["variant"], r["keep"]): r for r in case["summary"]["rows"]}
        flops = [rows[("fastervlm", k)]["flops_ratio"] for k in KEEPS]
        assert all(0 < f < 1 for f in flops) and flops == sorted(flops, reverse=True)
        assert all(rows[("oracle", k)]["flops_ratio"] == rows[("fastervlm", k)]["flops_ratio"] for k in KEEPS)
        base = rows[("unpatched", None)]["kv_cache_mib"]
        assert all(rows[("fastervlm", k)]["kv_cache_mib"] < base for k in KEEPS)
        assert all("patched_over_oracle" in rows[("fastervlm", k)] for k in KEEPS)


def test_markdown_section_written_once(run):
    md = run["md"]
    md.write_text(md.read_text() + "\nA note written by hand.\n")
    replace_section(md, families.SECTION, families.markdown(run["result"]))  # a rerun's write
    text = md.read_text()
    begin, end = markers("families")
    assert text.count(begin) == 1 and text.count(end) == 1
    assert "A note written by hand." in text
    for title in ("LLaVA-NeXT, image", "Qwen2-VL, image", "Qwen2-VL, video", "Video-LLaVA, video", "Qwen2.5-VL, image",
                  "Qwen2.5-VL, video", "Qwen3-VL, image", "LLaVA-OneVision, image", "LLaVA-OneVision, video",
                  "Gemma 3, image"):
        assert f"| {title} | (a) unpatched |" in text
        assert f"- **{title}**:" in text  # its geometry line
    for title in ("Qwen2-VL, image", "Qwen3-VL, image", "LLaVA-OneVision, video", "Gemma 3, image"):
        assert f"| {title} | (b) vtr fastervlm (adapted) | 0.1 |" in text
    assert "| LLaVA-NeXT, image | (b) vtr fastervlm | 0.1 |" in text
    assert "DeepStack features differ by at most" in text
    assert "Machine:" in text


def test_carry_cases_keeps_the_other_cases_of_the_same_settings(run, tmp_path):
    """``--cases X --carry-cases`` reruns X only and keeps every other case of the existing result as it was;
    a result of other models or keeps is refused rather than mixed in; other timing settings are stated."""
    js = tmp_path / "families.json"
    js.write_text(json.dumps(run["json"]))
    md = tmp_path / "BENCHMARKS.md"
    args = ["--quick", "--md", str(md), "--json", str(js), "--carry-cases"]
    families.main([*args, "--cases", "gemma3_image"], log=lambda *_: None)
    new = {c["case"]: c for c in json.loads(js.read_text())["cases"]}
    assert list(new) == list(families.CASES)  # the section's order, every case
    for name, case in cases(run).items():
        if name != "gemma3_image":
            assert new[name] == case  # as measured, with its own date
    assert new["gemma3_image"]["checks"].keys() == cases(run)["gemma3_image"]["checks"].keys()
    assert "| Gemma 3, image | (a) unpatched |" in md.read_text()
    with pytest.raises(SystemExit, match="other settings"):
        families.main([*args, "--cases", "gemma3_image", "--keeps", "0.5"], log=lambda *_: None)
    families.main([*args, "--cases", "video_llava", "--repeats", "1", "--warmup", "0"], log=lambda *_: None)
    text = md.read_text()
    assert "Measured in separate runs" in text and "Video-LLaVA, video on " in text
    assert "(0 warm-up round(s), 1 clean samples wanted" in text
