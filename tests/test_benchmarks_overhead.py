"""The overhead benchmark's bookkeeping (quick mode; no timing assertions)."""
import json

from benchmarks import overhead


def test_quick_run_reports_every_reducer_against_an_oracle(tmp_path):
    md, js = tmp_path / "B.md", tmp_path / "o.json"
    for _ in range(2):  # a rerun replaces the section
        result = overhead.main(["--quick", "--md", str(md), "--json", str(js)], log=lambda *a: None)
    labels = [r["reducer"] for r in result["rows"]]
    assert labels == [overhead.case_label(n, s) for n, s in overhead.CASES]
    assert all(r["visual_tokens"] >= 1 and 0 < r["flops_ratio"] < 1 for r in result["rows"])
    assert all(str(r["visual_tokens"]) in result["oracles"] for r in result["rows"])
    text = md.read_text()
    assert text.count("<!-- overhead:begin -->") == 1 and "overhead vs oracle" in text
    assert json.loads(js.read_text())["keep"] == 0.25


def test_claim_rivals_are_read_from_the_accuracy_results(tmp_path):
    """The rival at each claim budget is the most accurate other reducer of the results file, and the quick run
    times vtr's own reducer against it side by side."""
    results = {"reducers": {"divrelay": {"0.05": {"accuracy": 0.9}, "0.1": {"accuracy": 0.9}},
                            "fastv": {"0.05": {"accuracy": 0.8}, "0.1": {"accuracy": 0.5}},
                            "divprune": {"0.05": {"accuracy": 0.7}, "0.1": {"accuracy": 0.6}}}}
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps(results))
    assert overhead.claim_rivals(str(path)) == {"0.05": "fastv", "0.1": "divprune"}
    assert overhead.claim_rivals(str(tmp_path / "missing.json")) == {}
    result = overhead.main(["--quick", "--md", str(tmp_path / "B.md"), "--json", str(tmp_path / "o.json"),
                            "--accuracy-json", str(path)], log=lambda *a: None)
    # the quick model's 2-layer LLM has no layer 2 for fastv: that budget is skipped with the reason
    assert [(r["keep"], r["rival"]) for r in result["claim"]] == [("0.1", "divprune")]
    assert list(result["claim_skipped"]) == ["0.05"] and result["claim_skipped"]["0.05"].startswith("fastv: ")
    for r in result["claim"]:
        assert r["own_min_s"] > 0 and r["rival_min_s"] > 0 and r["own_select_ms"] > 0
        assert r["own_layer_share"] <= float(r["keep"]) + 1e-9
    assert "own / rival" in (tmp_path / "B.md").read_text()
