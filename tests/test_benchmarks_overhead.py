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
