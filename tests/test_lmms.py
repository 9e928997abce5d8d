"""The lmms-eval plugin end to end, offline: a local task over procedural scenes, run through
``simple_evaluate`` and through the ``lmms-eval`` CLI with the shipped checkpoint, checked against
scoring the same questions directly with vtr (patched ``generate`` batch-1, log-probs read off the last
logits rows by hand), and the other families on tiny random models saved with ``save_pretrained``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval")

import vtr  # noqa: E402
from vtr.lmms.scoring import cut_at_stop, rows_of_columns  # noqa: E402
from vtr.shapes import CHECKPOINT, render_pil, test_set as shapes_test_set  # noqa: E402
from vtr.testing import chat_prompt, random_frames, random_image, tiny_model  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
N_DOCS = 6
MAX_NEW = 4


def write_task(folder: Path) -> list[dict]:
    """A JSON dataset of rendered scenes and two task YAMLs over it: ``vtr_shapes_gen`` (generate_until,
    exact match) and ``vtr_shapes_mc`` (multiple choice by loglikelihood)."""
    rows = []
    for i, item in enumerate(shapes_test_set()[:N_DOCS]):
        image = folder / f"scene{i}.png"
        render_pil(item.scene).save(image)
        choices = sorted({item.answer, "yes", "no", "left"})
        rows.append({"image": str(image), "question": item.question, "answer": item.answer, "choices": choices})
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_visual: image\ndoc_to_text: question\ndoc_to_target: answer\n")
    (folder / "vtr_shapes_gen.yaml").write_text(
        "task: vtr_shapes_gen\n" + common + "output_type: generate_until\n"
        f"generation_kwargs:\n  max_new_tokens: {MAX_NEW}\n  temperature: 0\n  until: [\"\\n\"]\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "vtr_shapes_mc.yaml").write_text(
        "task: vtr_shapes_mc\n" + common + "output_type: multiple_choice\ndoc_to_choice: choices\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return rows


def load_shapes():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(CHECKPOINT).eval()
    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    processor.tokenizer.padding_side = "left"
    return model, processor


def direct_answer(model, processor, prompt: str, images=None, videos=None) -> str:
    """Greedy answer of one prompt: ``generate`` batch-1, new tokens decoded, cut at a newline."""
    inputs = processor(text=[prompt], images=images, videos=videos, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return cut_at_stop(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0], ["\n"])


def direct_logprobs(model, processor, prompt: str, continuation: str, images=None, videos=None) -> torch.Tensor:
    """Log-probs ``(n,)`` of the continuation's ``n`` tokens, batch-1: they end the sequence, and text is never
    dropped, so the rows predicting them are the logits' last ``n + 1`` rows but one, whatever was reduced."""
    tok = processor.tokenizer
    n = len(tok(prompt + continuation)["input_ids"]) - len(tok(prompt)["input_ids"])
    inputs = processor(text=[prompt + continuation], images=images, videos=videos, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -(n + 1):-1].float()
    targets = inputs["input_ids"][0, -n:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


def make_requests(kind: str, arguments: list[tuple]):
    from lmms_eval.api.instance import Instance

    return [Instance(request_type=kind, arguments=a, idx=0, metadata={"task": a[4], "doc_id": a[3], "repeats": 1})
            for a in arguments]


# -- simple_evaluate on the shipped checkpoint --------------------------------------------------------

@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lmms_task")
    return folder, write_task(folder)


@pytest.fixture(scope="module")
def python_run(task_dir):
    """``simple_evaluate(model=VTRModel(...))`` with FasterVLM at keep 0.1, batch 3, over both tasks."""
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager

        from vtr.lmms import VTRModel

        model, processor = load_shapes()
        lm = VTRModel(model=model, processor=processor, reducer="fastervlm", keep=0.1, batch_size=3)
        results = simple_evaluate(model=lm, tasks=["vtr_shapes_gen", "vtr_shapes_mc"], bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(task_dir[0])), log_samples=True)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return results, model, processor, lm


@pytest.fixture(scope="module")
def direct(task_dir, python_run):
    """The same questions scored directly with the patched model, one at a time."""
    _, model, processor, _ = python_run
    assert not vtr.is_patched(model), "the plugin unpatches a model it was given when the run ends"
    rows = task_dir[1]
    answers, values, flops = [], [], [0.0, 0.0]
    with vtr.patched(model, "fastervlm", keep=0.1):
        for row in rows:
            image = [render_pil_from(row)]
            answers.append(direct_answer(model, processor, chat_prompt(row["question"]), images=image))
            flops = add_flops(flops, model.vtr.stats)
            values.append([])
            for choice in row["choices"]:
                logp = direct_logprobs(model, processor, chat_prompt(row["question"]), " " + choice, images=image)
                values[-1].append(float(-logp.mean()))
                flops = add_flops(flops, model.vtr.stats)
    return {"answers": answers, "values": values, "flops_ratio": flops[1] / flops[0]}


def render_pil_from(row):
    from PIL import Image

    return Image.open(row["image"]).convert("RGB")


def add_flops(total, stats):
    return [total[0] + stats.prefill_flops_before, total[1] + stats.prefill_flops_after]


def test_simple_evaluate_answers_equal_direct_generate(python_run, direct, task_dir):
    results, *_ = python_run
    samples = sorted(results["samples"]["vtr_shapes_gen"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in samples] == direct["answers"]
    truth = [row["answer"] for row in task_dir[1]]
    expected = np.mean([a == t for a, t in zip(direct["answers"], truth)])
    assert results["results"]["vtr_shapes_gen"]["exact_match,none"] == pytest.approx(expected)
    assert expected > 0.5  # the trained model answers most of them, also at keep 0.1


def test_simple_evaluate_loglikelihood_equals_direct_logprobs(python_run, direct, task_dir):
    results, *_ = python_run
    samples = sorted(results["samples"]["vtr_shapes_mc"], key=lambda s: s["doc_id"])
    got = [[float(pair[0]) for pair in s["filtered_resps"]] for s in samples]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(direct["values"]), rtol=1e-4, atol=1e-5)
    picks = [row["choices"][int(np.argmin(v))] == row["answer"] for row, v in zip(task_dir[1], direct["values"])]
    assert results["results"]["vtr_shapes_mc"]["acc,none"] == pytest.approx(np.mean(picks))


def test_results_record_vtr_stats(python_run, direct):
    results, _, _, lm = python_run
    throughput = results["throughput"]
    n_requests = N_DOCS + sum(len(r) for r in direct["values"])
    assert throughput["avg_vtr_requests"] == n_requests
    assert throughput["avg_vtr_visual_tokens_in"] == 144  # 12 × 12 patches per scene
    assert throughput["avg_vtr_visual_tokens_kept"] == 14  # 144 × 0.1 rounded half up
    assert throughput["avg_vtr_flops_ratio"] == pytest.approx(direct["flops_ratio"], rel=1e-9)
    summary = lm.reduction_summary()
    assert summary["reducer"] == "fastervlm" and summary["settings"] == {"keep": 0.1}
    tokens = [s["token_counts"][0]["input_tokens"] for s in results["samples"]["vtr_shapes_gen"]]
    assert all(t < 144 for t in tokens)  # the LLM input: text + 14 visual tokens


def test_cli_runs_offline_and_matches_the_python_entry(task_dir, python_run, tmp_path):
    results, *_ = python_run
    out = tmp_path / "out"
    cli = Path(sys.executable).parent / "lmms-eval"
    command = [str(cli), "eval", "--model", "vtr", "--model_args",
               f"pretrained={CHECKPOINT},reducer=fastervlm,keep=0.1,batch_size=2",
               "--tasks", "vtr_shapes_gen,vtr_shapes_mc", "--include_path", str(task_dir[0]),
               "--output_path", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = [json.loads(p.read_text()) for p in out.rglob("*_results.json")]
    assert len(saved) == 1, list(out.rglob("*"))
    for task, metric in (("vtr_shapes_gen", "exact_match,none"), ("vtr_shapes_mc", "acc,none")):
        assert saved[0]["results"][task][metric] == pytest.approx(results["results"][task][metric])
    assert saved[0]["throughput"]["avg_vtr_visual_tokens_kept"] == 14
    assert saved[0]["throughput"]["avg_vtr_flops_ratio"] == pytest.approx(results["throughput"]["avg_vtr_flops_ratio"])


# -- keep=1.0 and reducer=none against the unpatched model ------------------------------------------

def test_identity_loglikelihood_and_answers_equal_the_unpatched_model(task_dir):
    """``reducer=none`` and ``keep=1.0`` (batch 4) give the unpatched model's log-probs, computed by hand batch-1."""
    from vtr.lmms import VTRModel

    model, processor = load_shapes()
    rows = task_dir[1][:2]
    visual = render_pil_from_list
    ll_args = [(row["question"], " " + c, visual, i, "t", "test") for i, row in enumerate(rows) for c in row["choices"]]
    gen_args = [(row["question"], {"max_new_tokens": MAX_NEW, "until": ["\n"]}, visual, i, "t", "test")
                for i, row in enumerate(rows)]
    expected = [float(direct_logprobs(model, processor, chat_prompt(a[0]), a[1], images=visual(rows[a[3]])).sum())
                for a in ll_args]
    expected_answers = [direct_answer(model, processor, chat_prompt(a[0]), images=visual(rows[a[3]])) for a in gen_args]
    for reducer, settings in (("none", {}), ("fastervlm", {"keep": 1.0})):
        lm = VTRModel(model=model, processor=processor, reducer=reducer, batch_size=4, ll_value="sum_logprob",
                      **settings)
        lm.task_dict = {"t": {"test": rows}}
        got = [r.text for r in lm.loglikelihood(make_requests("loglikelihood", ll_args))]
        answers = [r.text for r in lm.generate_until(make_requests("generate_until", gen_args))]
        summary = lm.reduction_summary()
        lm.clean()
        assert not vtr.is_patched(model)
        np.testing.assert_allclose([value for value, _ in got], expected, rtol=1e-4, atol=1e-4, err_msg=reducer)
        assert answers == expected_answers, reducer
        assert summary["visual_tokens_kept"] == summary["visual_tokens_in"] == 144 and summary["flops_ratio"] == 1.0


def render_pil_from_list(row):
    return [render_pil_from(row)]


# -- the other families on tiny random models -------------------------------------------------------

def write_video(path: Path, frames: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def family_prompt(family: str, question: str, kind: str) -> str:
    """Each tiny family's own prompt format (the one :mod:`vtr.testing` builds its inputs with)."""
    if family == "qwen2_vl":
        from vtr.testing.qwen2_vl import media_prompt

        return media_prompt(question, (kind,))
    return chat_prompt(question, "<video>" if kind == "video" else "<image>")


@pytest.mark.parametrize("family,kind,frames", [("llava_next", "image", 8), ("qwen2_vl", "image", 4),
                                                ("qwen2_vl", "video", 4), ("video_llava", "video", 8)])
def test_families_answer_and_score_like_direct_calls(tmp_path, family, kind, frames):
    from vtr.lmms import VTRModel
    from vtr.media import load_video

    model, processor = tiny_model(family)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    docs = []
    for i in range(2):
        if kind == "image":
            media = tmp_path / f"image{i}.png"
            random_image(rng, 200, 260).save(media)
        else:
            media = tmp_path / f"video{i}.mp4"
            write_video(media, random_frames(rng, n_frames=8, side=112))
        docs.append({"media": str(media), "question": ["what is in the image?", "is there a red circle?"][i]})
    lm = VTRModel(pretrained=str(tmp_path / "model"), reducer="fastervlm", keep=0.25, batch_size=2, device="cpu",
                  max_frames_num=frames)
    lm.task_dict = {"t": {"test": docs}}
    visual = lambda doc: [doc["media"]]  # noqa: E731 - a task's doc_to_visual: paths, read by the plugin
    gen_args = [(d["question"], {"max_new_tokens": MAX_NEW, "until": ["\n"]}, visual, i, "t", "test")
                for i, d in enumerate(docs)]
    ll_args = [(d["question"], " yes", visual, i, "t", "test") for i, d in enumerate(docs)]
    answers = [r.text for r in lm.generate_until(make_requests("generate_until", gen_args))]
    scored = [r.text for r in lm.loglikelihood(make_requests("loglikelihood", ll_args))]
    summary = lm.reduction_summary()
    lm.clean()

    model, processor = lm_reload(tmp_path / "model")
    vtr.patch(model, "fastervlm", keep=0.25)
    expected_answers, expected_values = [], []
    for d in docs:
        media = ({"images": [load_image_rgb(d["media"])]} if kind == "image"
                 else {"videos": [load_video(d["media"], frames)]})
        prompt = family_prompt(family, d["question"], kind)
        expected_answers.append(direct_answer(model, processor, prompt, **media))
        expected_values.append(float(-direct_logprobs(model, processor, prompt, " yes", **media).mean()))
    assert answers == expected_answers
    np.testing.assert_allclose([v for v, _ in scored], expected_values, rtol=1e-4, atol=1e-4)
    assert summary["visual_tokens_kept"] < summary["visual_tokens_in"] and summary["flops_ratio"] < 1


def lm_reload(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return AutoModelForImageTextToText.from_pretrained(path).eval(), processor


def load_image_rgb(path):
    from vtr.media import load_image

    return load_image(path)


# -- registration, errors, the scoring helpers ------------------------------------------------------

def test_the_entry_point_registers_the_model_id():
    import lmms_eval.models

    from vtr.lmms.model import VTRModel

    assert lmms_eval.models.get_model("vtr") is VTRModel


@pytest.mark.parametrize("kwargs,message", [
    ({"reducer": "nope"}, "reducer='nope' is unknown; available: none, aim"),
    ({"reducer": "fastervlm", "keep": 1.5}, "keep"),
    ({"reducer": "fastervlm", "keep": 0.1, "colour": 3}, "colour"),
    ({"reducer": "none", "keep": 0.1}, "reducer=none runs the unpatched model"),
    ({"reducer": "none", "batch_size": 0}, "batch_size=0 must be an integer >= 1"),
    ({"reducer": "none", "ll_value": "max"}, "ll_value='max' is not allowed; allowed: mean_nll, sum_logprob"),
])
def test_bad_model_args_fail_before_loading_naming_the_argument(kwargs, message):
    from vtr.lmms import VTRModel

    with pytest.raises((ValueError, TypeError), match=message):
        VTRModel(pretrained="/nonexistent/model/folder", **kwargs)


def test_model_args_batch_size_wins_over_the_cli_default():
    from vtr.lmms.model import VTRModel

    with pytest.raises(ValueError, match="batch_size=0"):  # model_args' value reached __init__, not the CLI's 1
        VTRModel.create_from_arg_string("pretrained=/nonexistent,reducer=none,batch_size=0", {"batch_size": 1})


def test_rows_of_columns_inverts_kept_columns():
    kept = torch.tensor([-1, 0, 1, 5, 6, 7])  # left filler, two text columns, visual 2–4 dropped
    assert rows_of_columns(kept, torch.tensor([5, 7, 0])).tolist() == [3, 5, 1]
    with pytest.raises(RuntimeError, match=r"prompt columns \[3\] were dropped"):
        rows_of_columns(kept, torch.tensor([3]))
    assert cut_at_stop("red\nblue", ["\n", "bl"]) == "red" and cut_at_stop("red", []) == "red"
