"""The in-LLM benchmark's smoke run: every variant is measured, the FastV peer (eager layer K-1,
original scoring, no vtr) keeps the same tokens as vtr's FastV and leaves the model as it was,
per-layer counts and KV cache lengths follow each reducer's schedule, and the markdown section is
written once.

No timing assertions: the machine's speed is not under test, the benchmark's bookkeeping is.
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import in_llm  # the repo root is on pytest's pythonpath (pyproject.toml)
from benchmarks.report import markers
from vtr.ops.selection import keep_count

K = in_llm.FASTV_LAYER


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("in_llm")
    md, js = out / "BENCHMARKS.md", out / "in_llm.json"
    result = in_llm.main(["--quick", "--md", str(md), "--json", str(js)], log=lambda *_: None)
    rows = {(r["variant"], r["keep"]): r for r in result["summary"]["rows"]}
    return dict(result=result, rows=rows, md=md.read_text(), json=json.loads(js.read_text()))


def test_every_variant_is_timed(run):
    want = {("unpatched", None), ("aim", 0.25), ("aim_merge", 0.25), ("atp", None), ("atp_calibrated", 0.25)}
    want |= {(v, k) for v in ("fastv", "fastv_peer") for k in in_llm.FASTV_KEEPS}
    assert set(run["rows"]) == want
    rows = run["json"]["summary"]["rows"]
    rounds = run["json"]["timing"]["rounds"]
    assert rounds >= run["json"]["setup"]["repeats"]
    assert all(len(r["times_s"]) == len(r["foreign_cores"]) == rounds and r["min_s"] > 0 for r in rows)
    assert all(r["settings"] for r in rows)


def test_peer_keeps_what_vtr_fastv_keeps(run):
    n, prompt = run["json"]["setup"]["visual_tokens"], run["json"]["setup"]["prompt_tokens"]
    for keep in in_llm.FASTV_KEEPS:
        ours, peer = run["rows"][("fastv", keep)], run["rows"][("fastv_peer", keep)]
        assert peer["kept_equal_vtr"] and peer["max_abs_logit_diff_vs_vtr"] < 1e-4
        kept = keep_count(keep, n)
        layers = [n] * K + [kept] * (len(ours["visual_tokens_per_layer"]) - K)
        assert ours["visual_tokens_per_layer"] == peer["visual_tokens_per_layer"] == layers
        # layers < K cache the whole prompt, layers >= K only text + kept visual tokens
        lengths = [prompt] * K + [prompt - n + kept] * (len(layers) - K)
        assert ours["kv_cache_lengths"] == peer["kv_cache_lengths"] == lengths
        assert abs(ours["flops_ratio"] - peer["flops_ratio"]) < 1e-9
        assert "peer_over_vtr" in ours


def test_schedules_and_cache(run):
    rows, n = run["rows"], run["json"]["setup"]["visual_tokens"]
    prompt = run["json"]["setup"]["prompt_tokens"]
    base = rows[("unpatched", None)]
    assert base["kv_cache_lengths"] == [prompt] * len(base["kv_cache_lengths"])
    merged = keep_count(0.25, n)
    assert set(rows[("aim_merge", 0.25)]["visual_tokens_per_layer"]) == {merged}
    aim = rows[("aim", 0.25)]["visual_tokens_per_layer"]  # keep 0.25 is aim's total budget: merge less, then prune
    assert aim[0] >= merged and aim[-1] == 0 and aim == sorted(aim, reverse=True)
    assert sum(aim) / (len(aim) * n) == pytest.approx(0.25, abs=1.5 / n)
    for name in ("atp", "atp_calibrated"):
        atp = rows[(name, None if name == "atp" else 0.25)]["visual_tokens_per_layer"]
        assert atp[0] == n and atp == sorted(atp, reverse=True)
    for row in rows.values():  # each layer caches text + the visual tokens it processed
        text = prompt - n
        assert row["kv_cache_lengths"] == [text + v for v in row["visual_tokens_per_layer"]], row["variant"]
        assert 0 < row["flops_ratio"] <= 1
    assert rows[("fastv", 0.25)]["flops_ratio"] < rows[("fastv", 0.5)]["flops_ratio"] < 1
    cal = run["json"]["calibration"]
    assert cal["scale"] > 0 and abs(cal["mean"] - cal["target"]) < 0.05


def test_peer_restores_the_model():
    b = in_llm.build(in_llm.QUICK, seed=0)
    lm = b.model.model.language_model
    shared = lm.layers[K - 1].self_attn.config
    with torch.no_grad():
        before = b.model(**b.inputs, logits_to_keep=1).logits
        with in_llm.FastVPeer(b.model, b.inputs["input_ids"], b.image_token_id, keep=0.5) as peer:
            assert lm.layers[K - 1].self_attn.config._attn_implementation == "eager"
            assert lm.config._attn_implementation == "sdpa"  # the other layers keep SDPA
            pruned = b.model(**b.inputs, logits_to_keep=1)
        after = b.model(**b.inputs, logits_to_keep=1).logits
    assert peer.keep is not None and len(peer.keep) < b.inputs["input_ids"].shape[1]
    assert pruned.cache.layers[K].keys.shape[-2] == len(peer.keep)
    assert lm.layers[K - 1].self_attn.config is shared
    assert all(not layer._forward_pre_hooks and not layer.self_attn._forward_hooks for layer in lm.layers)
    assert torch.equal(before, after)


def test_markdown_section(run):
    text = run["md"]
    begin, end = markers("in_llm")
    assert text.count(begin) == 1 and text.count(end) == 1
    assert "| FastV, original scoring (peer) | K=2, keep 0.5 |" in text
    assert "ATP-TF" in text and "Machine:" in text
