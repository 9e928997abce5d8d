"""``vtr eval`` / ``python -m benchmarks.vqa`` end to end on fixtures in every official layout, on the shipped
model: the metrics equal the official formula applied (here, independently) to the written predictions;
batch-N equals batch-1; ``--resume`` loses and repeats nothing; malformed files name the file and the
field; two processes under ``accelerate launch`` give the single-process predictions and metrics.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import vtr
from eval_fixtures import WRITERS
from vtr.eval.command import main, run_specs, load_model
from vtr.shapes import CHECKPOINT

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(CHECKPOINT)
ROW_FIELDS = {"question_id", "output", "prediction", "answer", "visual_tokens", "visual_tokens_in",
              "visual_tokens_layer_mean", "flops_before", "flops_after", "seconds"}
# the shapes model knows only its own words: an instruction would be out-of-vocabulary noise to it
QUIET = ["--instruction", ""]


def evaluate(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# -- independent scorers: the official definitions, written out slowly ---------------------------------

def vqa_reference(prediction: str, answers: list[str]) -> float:
    total = 0.0
    for left_out in range(len(answers)):
        others = answers[:left_out] + answers[left_out + 1:]
        total += min(1.0, len([a for a in others if a == prediction]) / 3)
    return total / len(answers)


def pope_reference(pairs):
    tp = len([1 for p, y in pairs if p == "yes" and y == "yes"])
    fp = len([1 for p, y in pairs if p == "yes" and y == "no"])
    fn = len([1 for p, y in pairs if p == "no" and y == "yes"])
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    correct = len([1 for p, y in pairs if p == y])
    return {"accuracy": 100 * correct / len(pairs), "f1": 100 * f1, "precision": 100 * precision,
            "recall": 100 * recall, "yes_ratio": 100 * len([1 for p, _ in pairs if p == "yes"]) / len(pairs)}


def reference_metrics(task: str, rows: list[dict], truth: dict) -> dict:
    """The headline metrics recomputed from ``prediction`` and the ground truth the fixture wrote."""
    if task in ("vqav2", "textvqa"):  # fixture answers are lower-case words: normalisation leaves them as is
        return {"accuracy": 100 * sum(vqa_reference(r["prediction"], truth[r["question_id"]]) for r in rows) / len(rows)}
    if task in ("gqa", "scienceqa"):
        return {"accuracy": 100 * sum(r["prediction"] == truth[r["question_id"]] for r in rows) / len(rows)}
    if task == "pope":
        splits = defaultdict(list)
        for r in rows:
            splits[r["question_id"].split("/")[0]].append((r["prediction"], truth[r["question_id"]]))
        per = {s: pope_reference(p) for s, p in splits.items()}
        return {"mean.f1": sum(m["f1"] for m in per.values()) / len(per),
                "mean.accuracy": sum(m["accuracy"] for m in per.values()) / len(per)}
    if task == "mme":
        scores = defaultdict(float)
        by_image = defaultdict(list)
        for r in rows:
            label, subtask, image = truth[r["question_id"]]
            by_image[(subtask, image)].append(r["prediction"] == label)
        per_subtask = defaultdict(list)
        for (subtask, _), oks in by_image.items():
            per_subtask[subtask].append(oks)
        for subtask, images in per_subtask.items():
            flat = [ok for oks in images for ok in oks]
            scores[subtask] = 100 * sum(flat) / len(flat) + 100 * sum(all(oks) for oks in images) / len(images)
        return {"perception": scores["existence"] + scores["artwork"], "cognition": scores["code_reasoning"]}
    raise AssertionError(task)


@pytest.mark.parametrize("layout", list(WRITERS))
def test_every_layout_end_to_end(layout, tmp_path, capsys):
    task = layout.removesuffix("_tsv")
    truth = WRITERS[layout](tmp_path / "data")
    code, err = evaluate(capsys, "--task", task, "--data", tmp_path / "data", "--model", MODEL, "--reducers", "fastervlm",
                         "--keeps", "0.1", "--batch", 3, "--out", tmp_path / "out", *QUIET)
    assert code == 0, err
    root = tmp_path / "out" / task
    summary = json.loads((root / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["unpruned", "fastervlm@0.1"]
    assert (root / "summary.md").is_file() and (root / "plot.png").is_file()
    unpruned = None
    for folder, tokens in ((root / "unpruned", 144), (root / "fastervlm" / "keep_0.1", 14)):
        rows = rows_of(folder)
        assert [r["question_id"] for r in rows] == list(truth)  # every question once, in file order
        assert all(set(r) == ROW_FIELDS for r in rows)
        assert all(r["visual_tokens"] == tokens and r["visual_tokens_in"] == 144 for r in rows)
        metrics = json.loads((folder / "metrics.json").read_text())
        expected = reference_metrics(task, rows, truth)
        assert metrics["headline"] == pytest.approx(expected)
        assert metrics["n"] == len(truth)
        assert metrics["visual_tokens_mean"] == tokens
        assert metrics["flops_ratio"] == pytest.approx(sum(r["flops_after"] for r in rows) / sum(r["flops_before"] for r in rows))
        unpruned = unpruned or metrics
        for name, value in metrics["retention"].items():
            base = unpruned["headline"][name]
            assert value == (pytest.approx(metrics["headline"][name] / base) if base else None)
    assert metrics["flops_ratio"] < 0.3 and unpruned["flops_ratio"] == 1.0


def test_batched_equals_batch_one(tmp_path, capsys):
    common = ["--task", "shapes", "--limit", 5, "--reducers", "fastervlm", "fastv", "--keeps", "0.25"]
    for batch in (1, 5):
        code, err = evaluate(capsys, *common, "--batch", batch, "--out", tmp_path / f"b{batch}")
        assert code == 0, err
    for run in ("unpruned", "fastervlm/keep_0.25", "fastv/keep_0.25"):
        one, many = rows_of(tmp_path / "b1" / "shapes" / run), rows_of(tmp_path / "b5" / "shapes" / run)
        assert without_time(many) == without_time(one), run
    metrics = json.loads((tmp_path / "b5" / "shapes" / "unpruned" / "metrics.json").read_text())
    unpruned = rows_of(tmp_path / "b5" / "shapes" / "unpruned")
    assert metrics["metrics"]["accuracy"] == 100 * sum(r["prediction"] == r["answer"] for r in unpruned) / 5
    assert metrics["metrics"]["accuracy"] >= 60  # the trained model (0.85 on the full set), not chance (0.34)


def test_resume_skips_what_was_written_and_repeats_nothing(tmp_path, capsys):
    common = ["--task", "shapes", "--limit", 5, "--reducers", "random", "--keeps", "0.25", "--batch", 2]
    assert evaluate(capsys, *common, "--out", tmp_path / "full")[0] == 0
    assert evaluate(capsys, *common, "--out", tmp_path / "cut")[0] == 0
    cut = tmp_path / "cut" / "shapes" / "random" / "keep_0.25" / "predictions.jsonl"
    lines = cut.read_text().splitlines()
    cut.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # killed while writing line 3
    (cut.parent / "metrics.json").unlink()
    code, err = evaluate(capsys, *common, "--out", tmp_path / "cut")
    assert code == 2 and "--resume" in err and "\n" not in err.strip()
    code, err = evaluate(capsys, *common, "--out", tmp_path / "cut", "--max-new-tokens", 7, "--resume")
    assert code == 2 and "max_new_tokens" in err
    assert evaluate(capsys, *common, "--out", tmp_path / "cut", "--resume")[0] == 0
    resumed = rows_of(cut.parent)
    full = rows_of(tmp_path / "full" / "shapes" / "random" / "keep_0.25")
    assert without_time(resumed) == without_time(full)
    assert [r["seconds"] for r in resumed[:2]] == [json.loads(line)["seconds"] for line in lines[:2]]  # not redone
    metrics = [json.loads((root / "shapes" / "random" / "keep_0.25" / "metrics.json").read_text())
               for root in (tmp_path / "full", tmp_path / "cut")]
    assert metrics[0]["metrics"] == metrics[1]["metrics"]


def corrupt(path: Path, edit) -> None:
    path.write_text(edit(path.read_text()))


def drop_answers(text):
    data = json.loads(text)
    del data["annotations"][1]["answers"]
    return json.dumps(data)


def bad_label(text):
    lines = text.splitlines()
    lines[1] = lines[1].replace('"label": "no"', '"label": "maybe"').replace('"label": "yes"', '"label": "maybe"')
    return "\n".join(lines)


def answer_out_of_range(text):
    data = json.loads(text)
    data["101"]["answer"] = 7
    return json.dumps(data)


def drop_image_id(text):
    data = json.loads(text)
    del data[next(iter(data))]["imageId"]
    return json.dumps(data)


MALFORMED = [
    ("vqav2", "v2_mscoco_val2014_annotations.json", drop_answers, ["annotations[1]", "'answers'"]),
    ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", lambda t: t[:-5], ["not valid JSON"]),
    ("pope", "coco_pope_random.json", bad_label, ["line 2", "'label'", "maybe"]),
    ("mme", "existence/0000.txt", lambda t: t.replace("\t", " ", 1), ["line 1", "question<TAB>answer"]),
    ("mme_tsv", "MME.tsv", lambda t: t.replace("category", "kind", 1), ["category"]),
    ("scienceqa", "problems.json", answer_out_of_range, ["problem '101'", "'answer'"]),
    ("gqa", "testdev_balanced_questions.json", drop_image_id, ["'imageId'"]),
]


@pytest.mark.parametrize("layout, name, edit, words", MALFORMED, ids=[f"{m[0]}-{m[1].split('/')[-1]}" for m in MALFORMED])
def test_malformed_files_name_the_file_and_the_field(layout, name, edit, words, tmp_path, capsys):
    WRITERS[layout](tmp_path)
    corrupt(tmp_path / name, edit)
    code, err = evaluate(capsys, "--task", layout.removesuffix("_tsv"), "--data", tmp_path, "--out", tmp_path / "out")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and name.split("/")[-1] in err, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_missing_image_and_missing_data_are_clear(tmp_path, capsys):
    WRITERS["textvqa"](tmp_path)
    next((tmp_path / "train_images").iterdir()).unlink()
    code, err = evaluate(capsys, "--task", "textvqa", "--data", tmp_path)
    assert code == 2 and "TextVQA_0.5.1_val.json" in err and "not found" in err
    code, err = evaluate(capsys, "--task", "gqa", "--data", tmp_path / "nothing")
    assert code == 2 and "--data" in err
    code, err = evaluate(capsys, "--task", "gqa")
    assert code == 2 and "--data is required" in err


def test_reducers_all_skips_what_the_model_cannot_take_and_explicit_names_fail_fast():
    model, _ = load_model(MODEL, "float32")
    specs, skipped = run_specs(model, ["all"], [0.5], seed=0)
    names = {s.reducer for s in specs}
    assert None in names and "fastervlm" in names and "globalcom2" in skipped
    assert names - {None} | set(skipped) == set(vtr.list_reducers())
    with pytest.raises(ValueError, match="--reducers globalcom2"):
        run_specs(model, ["globalcom2"], [0.5], seed=0)
    with pytest.raises(ValueError, match="unknown reducer 'nope'"):
        run_specs(model, ["nope"], [0.5], seed=0)
    assert not vtr.is_patched(model)


def test_per_question_flops_match_the_stats_of_a_batch_one_call():
    from vtr.adapters import adapter_for
    from vtr.eval.runner import row_accounting
    from vtr.shapes import render_pil, test_set
    from vtr.testing import chat_prompt

    model, processor = load_model(MODEL, "float32")
    adapter = adapter_for(model)
    item = test_set()[3]
    inputs = processor(images=[render_pil(item.scene)], text=[chat_prompt(item.question)], return_tensors="pt", padding=True)
    for reducer in ("fastervlm", "fastv", "aim"):
        with vtr.patched(model, reducer, keep=0.25), torch.no_grad():
            model(**inputs)
            cost = row_accounting(model, inputs, 0, adapter.text_config, adapter.placeholder_ids())
            stats = model.vtr.stats
        assert cost["flops_after"] / cost["flops_before"] == pytest.approx(stats.flops_ratio), reducer
        assert cost["flops_before"] == pytest.approx(stats.prefill_flops_before)


def test_prompt_uses_the_chat_template_or_llava_format():
    from vtr.eval.prompts import build_prompt
    from vtr.testing import tiny_model

    _, processor = tiny_model("llava")
    assert build_prompt(processor, "what is it?", "Answer briefly.") == "USER: <image>\nwhat is it?\nAnswer briefly. ASSISTANT:"
    assert build_prompt(processor, "Is it red? Please answer yes or no.", "Please answer yes or no.") == \
        "USER: <image>\nIs it red? Please answer yes or no. ASSISTANT:"
    processor.chat_template = ("{% for m in messages %}<|user|>{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                               "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|end|>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert build_prompt(processor, "what is it?", "Answer briefly.") == "<|user|><image>what is it?\nAnswer briefly.<|end|><|assistant|>"


def test_vtr_eval_subcommand_and_keep_one_is_the_identity(tmp_path, capsys):
    from vtr.cli import main as vtr_main

    assert vtr_main(["eval", "--task", "shapes", "--limit", "3", "--keeps", "1.0", "--out", str(tmp_path)]) == 0
    identity, unpruned = rows_of(tmp_path / "shapes" / "fastervlm" / "keep_1.0"), rows_of(tmp_path / "shapes" / "unpruned")
    assert [r["output"] for r in identity] == [r["output"] for r in unpruned]
    capsys.readouterr()
    assert vtr_main(["eval", "--task", "shapes", "--reducers", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtr eval: error: --reducers: unknown reducer 'nope'") and len(err.strip().splitlines()) == 1


def test_two_processes_give_the_single_process_results(tmp_path, capsys):
    data = tmp_path / "data"
    WRITERS["pope"](data)  # 7 questions: uneven shards
    common = ["--task", "pope", "--data", data, "--model", MODEL, "--reducers", "fastervlm", "--keeps", "0.1",
              "--batch", 2, *QUIET]
    assert evaluate(capsys, *common, "--out", tmp_path / "one")[0] == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29571",
              "-m", "benchmarks.vqa", *map(str, common), "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("unpruned", "fastervlm/keep_0.1"):
        one, two = tmp_path / "one" / "pope" / run, tmp_path / "two" / "pope" / run
        assert without_time(rows_of(two)) == without_time(rows_of(one))
        assert sorted(p.name for p in two.iterdir()) == ["metrics.json", "predictions.jsonl", "run.json"]  # shards merged
        m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
        assert m2["metrics"] == m1["metrics"] and m2["flops_ratio"] == m1["flops_ratio"]
    assert json.loads((tmp_path / "two" / "pope" / "summary.json").read_text())["processes"] == 2


def test_benchmark_entry_point_records_a_section(tmp_path, monkeypatch, capsys):
    import benchmarks.vqa as script

    monkeypatch.setattr(script, "ROOT", tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nhand-written text\n")
    argv = ["--task", "shapes", "--limit", "2", "--reducers", "fastervlm", "--keeps", "0.5", "--out", str(tmp_path / "o")]
    assert script.run([*argv, "--record"]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "hand-written text" in text and "<!-- vqa-shapes:begin -->" in text and "n = 2 questions" in text
    recorded = json.loads((tmp_path / "benchmarks" / "results" / "vqa_shapes.json").read_text())
    accuracy = recorded["runs"][1]["headline"]["accuracy"]
    assert f"| fastervlm@0.5 | 0.50 | 2 | {accuracy:.2f} |" in text
    assert "globalcom2" in recorded["not_run"] and "`globalcom2`" in text
    assert recorded["machine"]["wall_seconds"] > 0
