"""The training script end to end on second-long budgets: it saves a stock checkpoint that reloads, and
``--resume`` continues that checkpoint (stage 1 skipped, both runs recorded, the earlier log kept)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import train_tiny_llava


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    quick = ["--stage1-seconds", "1", "--cache-images", "256", "--cache-seconds", "1", "--stage2-seconds", "2",
             "--eval-every", "1000", "--batch1", "8", "--batch", "8"]
    threads = torch.get_num_threads()
    try:
        assert train_tiny_llava.main(["--out", str(out), *quick]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, quick


def test_first_run_saves_a_stock_checkpoint_with_its_record(first_run):
    from transformers import LlavaForConditionalGeneration

    out, _ = first_run
    record = json.loads((out / "training.json").read_text())
    assert record["stage1"]["steps"] >= 1 and "patch_position_acc" in record["stage1"]["final"]
    assert record["eval"]["n"] == 1250 and "earlier_stage2" not in record
    assert type(LlavaForConditionalGeneration.from_pretrained(out)) is LlavaForConditionalGeneration
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m benchmarks.train_tiny_llava --stage1-seconds 1 --stage2-seconds 2" in card


def test_resume_continues_the_checkpoint_and_records_both_runs(first_run, tmp_path):
    from safetensors.torch import load_file

    out, quick = first_run
    again = tmp_path / "continued"
    threads = torch.get_num_threads()
    try:
        assert train_tiny_llava.main(["--resume", str(out), "--out", str(again), *quick]) == 0
    finally:
        torch.set_num_threads(threads)
    first, second = (json.loads((d / "training.json").read_text()) for d in (out, again))
    assert second["stage1"] == first["stage1"]  # stage 1 not rerun
    assert second["earlier_stage2"][0]["steps"] == first["stage2"]["steps"]
    assert second["total_seconds"] > first["total_seconds"]
    before, after = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    tower = [k for k in before if "vision_tower" in k]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)  # frozen in stage 2
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in tower)  # trained on
    log = (again / "training.log").read_text()
    assert log.startswith((out / "training.log").read_text()) and "resuming from" in log
    assert "stage 2 (continued, `--resume`)" in (again / "MODEL_CARD.md").read_text()
