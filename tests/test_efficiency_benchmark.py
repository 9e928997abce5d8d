"""The efficiency benchmark's smoke run: every variant is measured, the reference scoring picks the
same tokens as vtr, FLOPs shrink with keep, and reruns replace (not duplicate) the markdown section.

No timing assertions: the machine's speed is not under test, the benchmark's bookkeeping is.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from benchmarks import efficiency  # the repo root is on pytest's pythonpath (pyproject.toml)
from benchmarks.report import markers, replace_section, time_rounds

KEEPS = (0.5, 0.25, 0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two quick runs into the same markdown file, with hand-written text added in between."""
    out = tmp_path_factory.mktemp("efficiency")
    md, js = out / "BENCHMARKS.md", out / "efficiency.json"
    argv = ["--quick", "--md", str(md), "--json", str(js)]
    first = efficiency.main(argv, log=lambda *_: None)
    first_md = md.read_text()
    md.write_text(md.read_text() + "\nA note written by hand.\n")
    second = efficiency.main(argv, log=lambda *_: None)
    return dict(first=first, second=second, first_md=first_md, md=md.read_text(), json=json.loads(js.read_text()))


def test_json_has_every_variant(runs):
    rows = runs["json"]["summary"]["rows"]
    got = {(r["variant"], r["keep"]) for r in rows}
    want = {("unpatched", None), ("vision", None)} | {(v, k) for v in ("fastervlm", "oracle", "reference") for k in KEEPS}
    assert got == want
    rounds = runs["json"]["timing"]["rounds"]
    assert rounds >= runs["json"]["setup"]["repeats"]
    assert all(len(r["times_s"]) == len(r["foreign_cores"]) == rounds and r["min_s"] > 0 for r in rows)
    for key in ("cpu", "cores_usable", "torch", "transformers", "dtype", "attention", "date"):
        assert key in runs["json"]["machine"]


def test_reference_indices_equal_vtr_indices(runs):
    checks = runs["json"]["checks"]
    n = runs["json"]["setup"]["visual_tokens"]
    for keep in KEEPS:
        c = checks[str(keep)]
        assert c["reference_kept"] == c["kept"]
        assert len(c["kept"]) == c["visual_tokens"] == round(n * keep)
        assert c["kept"] == sorted(set(c["kept"]))
        assert c["oracle_max_abs_logit_diff"] < 1e-4  # the oracle computes what the patched model does


def test_flops_ratio_decreases_with_keep(runs):
    ratios = runs["json"]["summary"]["ratios"]
    flops = [ratios[str(k)]["flops_ratio"] for k in sorted(KEEPS, reverse=True)]
    assert all(0 < f < 1 for f in flops)
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == len(flops)


def test_markdown_section_replaced_not_duplicated(runs):
    begin, end = markers("efficiency")
    text = runs["md"]
    assert text.count(begin) == 1 and text.count(end) == 1
    assert text.count("# Benchmarks") == 1
    assert "A note written by hand." in text  # outside the markers: kept
    assert "| (b) vtr fastervlm | 0.1 |" in text


def test_replace_section_keeps_other_sections(tmp_path):
    md = tmp_path / "B.md"
    replace_section(md, "one", "first")
    replace_section(md, "two", "second")
    replace_section(md, "one", "first again")
    text = md.read_text()
    assert "first again" in text and "second" in text and "first\n" not in text
    assert text.index("<!-- one:begin -->") < text.index("<!-- two:begin -->")
    md.write_text(text + "<!-- one:begin -->\n")
    with pytest.raises(ValueError, match="marker"):
        replace_section(md, "one", "x")


class _Call:
    label, calls = "noop", 0

    def run(self):
        self.calls += 1

    def context(self):
        return contextlib.nullcontext()


def test_time_rounds_gates_and_respects_budget():
    calls = [_Call(), _Call()]
    kept = time_rounds(calls, warmup=1, repeats=3, max_foreign=float("inf"), budget_s=5, log=lambda *_: None)
    assert kept["rounds"] == 3 and not kept["budget_hit"] and calls[0].calls == 4  # 1 warm-up + 3
    # every sample counts as contended: rounds go on until the budget is spent, and say so
    dirty = time_rounds(calls, warmup=0, repeats=2, max_foreign=-1.0, budget_s=0.3, log=lambda *_: None)
    assert dirty["budget_hit"] and dirty["rounds"] >= 2
    assert all(f is None or f >= 0 for fs in dirty["foreign"] for f in fs)


def test_measure_is_the_benchmark_as_a_call_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --md / --json paths are relative: nothing may appear here
    small = dict(vision=dict(efficiency.QUICK["vision"], image_size=56), text=efficiency.QUICK["text"])
    result = efficiency.measure((0.5, 0.25), quick=True, config=small, repeats=1, warmup=0)
    assert list(tmp_path.iterdir()) == []
    rows = {(r["variant"], r["keep"]) for r in result["summary"]["rows"]}
    assert rows == {("unpatched", None), ("vision", None)} | {(v, k) for v in ("fastervlm", "oracle", "reference")
                                                             for k in (0.5, 0.25)}
    assert result["setup"]["visual_tokens"] == (56 // 14) ** 2 and result["setup"]["repeats"] == 1
    assert all(c["reference_kept"] == c["kept"] for c in result["checks"].values())
    assert "| (b) vtr fastervlm | 0.25 |" in efficiency.markdown(result)
    with pytest.raises(ValueError, match=r"keeps must be ratios in \(0, 1\], got \(1.5,\)"):
        efficiency.measure((1.5,), quick=True)
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        efficiency.measure(quick=True, repeats=0)
