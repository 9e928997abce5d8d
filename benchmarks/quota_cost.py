"""What QuoTA's extra passes cost next to the answer pass, on a tiny Video-LLaVA.

``python -m benchmarks.quota_cost`` runs, interleaved for ``--repeats`` rounds after one warm-up:

(a) ``answer``: ``generate`` (``--new-tokens`` greedy tokens) patched with QuoTA and a free scorer
    (a callable returning uniform scores): vision tower, assignment, prefill of the reduced prompt,
    decoding. This is the answer pass every QuoTA call pays.
(b) ``quota``: the same call with the default ``scorer="self"`` and query decoupling on. Its
    ``stats.seconds`` split out the *scoring pass* (``quota_score``: one forward per batch of
    frames, each frame with the scoring question) and the *decoupling pass* (``quota_decouple``:
    text-only greedy generation of up to ``--decouple-tokens`` tokens; random weights never stop
    early, so this is its worst case).

Reported: min and median wall seconds of each, and the scoring and decoupling passes relative to
the answer pass (median of per-round ratios, and min/min). Also an analytic figure that does not
depend on the machine: LLM prefill FLOPs (:mod:`vtr.ops.flops`) of the scoring pass (T one-frame
prompts) over those of the answer prefill. Prints a markdown table and writes
``benchmarks/results/quota_cost.json``.

The tiny model's proportions (4-layer, 64-wide LLM; 4-layer CLIP) are not a 7B model's; the FLOPs
ratio carries over better than wall times do.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import vtr
from vtr.ops.flops import prefill_flops
from vtr.reducers.quota import assignments
from vtr.reducers.quota.prompts import media_prompt, split_prompt
from vtr.reducers.quota.scorers import scoring_text
from vtr.testing import random_frames, tiny_model

RESULTS = Path(__file__).parent / "results" / "quota_cost.json"
#: Video-LLaVA-7B's LLM (Vicuna-7B) shape, for the analytic FLOPs at the same token counts
VICUNA_7B = SimpleNamespace(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, head_dim=128)
QUESTION = "what happens after the person walks in"


def build(seed: int = 0):
    model, processor = tiny_model("video_llava", seed=seed)
    frames = random_frames(np.random.default_rng(seed), n_frames=8, side=224)
    inputs = processor(text=[f"USER: <video>\n{QUESTION} ASSISTANT:"], videos=[frames], return_tensors="pt")
    return model, processor, inputs


def timed_generate(model, inputs, new_tokens: int, placeholders: list[int]) -> float:
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   suppress_tokens=placeholders)
    return time.perf_counter() - start


def scoring_flops_ratio(model, processor, inputs, stats, text_config=None) -> dict:
    """Analytic LLM prefill FLOPs: T one-frame scoring prompts vs the answer pass's reduced prompt
    (and vs the unreduced prompt), for the tiny LLM or a given ``text_config``'s shape."""
    text_config = text_config or model.config.get_text_config()
    n_layers = text_config.num_hidden_layers
    video_id = model.config.video_token_id
    parts = split_prompt(inputs["input_ids"][0], video_id, processor.tokenizer)
    frames = inputs["pixel_values_videos"].shape[1]
    tokens_per_frame = int((inputs["input_ids"] == video_id).sum()) // frames
    objects = assignments(model)[0].objects
    prompt = media_prompt(parts, video_id, tokens_per_frame, scoring_text(parts.question, objects), processor.tokenizer)
    answer_len = inputs["input_ids"].shape[1] - stats.visual_tokens_in[0] + stats.visual_tokens_out[0]
    score = frames * prefill_flops(text_config, [len(prompt)] * n_layers)
    answer = prefill_flops(text_config, [answer_len] * n_layers)
    unreduced = prefill_flops(text_config, [inputs["input_ids"].shape[1]] * n_layers)
    return {"scoring_prompt_tokens": len(prompt), "frames": frames, "answer_prompt_tokens": answer_len,
            "unreduced_prompt_tokens": inputs["input_ids"].shape[1], "objects": objects,
            "scoring_over_answer_prefill_flops": score / answer, "scoring_over_unreduced_prefill_flops": score / unreduced}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--new-tokens", type=int, default=16, help="answer tokens (the reference answers in 16)")
    parser.add_argument("--decouple-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--md", type=Path, default=Path("BENCHMARKS.md"), help="markdown file whose quota_cost section is replaced")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor, inputs = build()
    placeholders = [model.config.image_token_id, model.config.video_token_id]
    settings = {
        "answer": dict(scorer=lambda frames, q: np.ones(len(frames)), question=QUESTION),
        "quota": dict(processor=processor, decouple_tokens=args.decouple_tokens),
    }
    rows = {"answer": [], "quota": [], "score": [], "decouple": []}
    analytic = None
    for r in range(-1, args.repeats):  # round -1 warms up
        order = list(settings) if r % 2 == 0 else list(reversed(settings))
        for name in order:
            with vtr.patched(model, "quota", keep=args.keep, **settings[name]):
                seconds = timed_generate(model, inputs, args.new_tokens, placeholders)
                stats = model.vtr.stats
                if name == "quota" and analytic is None:
                    analytic = {"tiny": scoring_flops_ratio(model, processor, inputs, stats),
                                "7b_shape": scoring_flops_ratio(model, processor, inputs, stats, VICUNA_7B)}
            if r < 0:
                continue
            rows[name].append(seconds)
            if name == "quota":
                rows["score"].append(stats.seconds["quota_score"])
                rows["decouple"].append(stats.seconds["quota_decouple"])
    result = summarise(rows, args, analytic)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from benchmarks.report import machine_info, machine_line, replace_section

    result["machine"] = machine_info(dtype="float32", threads=torch.get_num_threads())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    replace_section(args.md, "quota_cost", "## QuoTA: cost of the scoring pass (`python -m benchmarks.quota_cost`)\n\n"
                    + text + "\n\n" + machine_line(result["machine"]))
    print(text)
    return result


def summarise(rows: dict, args, analytic: dict) -> dict:
    def stat(values):
        return {"min": min(values), "median": statistics.median(values)}

    ratios = {name: [s / a for s, a in zip(rows[name], rows["answer"])] for name in ("score", "decouple", "quota")}
    return {
        "model": "tiny video_llava (vtr.testing): 8 frames x (1 + 16x16) tokens, 4-layer 64-wide Llama",
        "settings": {"keep": args.keep, "new_tokens": args.new_tokens, "decouple_tokens": args.decouple_tokens,
                     "repeats": args.repeats},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine()},
        "seconds": {name: stat(values) for name, values in rows.items()},
        "raw_seconds": rows,
        "relative_to_answer": {name: {"median_of_ratios": statistics.median(v),
                                      "min_over_min": min(rows[name]) / min(rows["answer"])} for name, v in ratios.items()},
        "analytic": analytic,
    }


def markdown(result: dict) -> str:
    s, rel = result["seconds"], result["relative_to_answer"]
    lines = [
        f"QuoTA cost on {result['model']}; keep={result['settings']['keep']}, "
        f"{result['settings']['new_tokens']} answer tokens, {result['settings']['repeats']} interleaved rounds.",
        "",
        "| pass | min s | median s | vs answer pass (median of ratios) | vs answer pass (min/min) |",
        "|---|---|---|---|---|",
        f"| answer pass (generate, free scorer) | {s['answer']['min']:.3f} | {s['answer']['median']:.3f} | 1 | 1 |",
    ]
    names = {"score": "scoring pass (scorer='self', one forward per frame batch)",
             "decouple": f"decoupling pass (text-only, {result['settings']['decouple_tokens']} tokens max)",
             "quota": "whole QuoTA call (generate)"}
    for key, label in names.items():
        lines.append(f"| {label} | {s[key]['min']:.3f} | {s[key]['median']:.3f} | "
                     f"{rel[key]['median_of_ratios']:.2f} | {rel[key]['min_over_min']:.2f} |")
    a = result["analytic"]["tiny"]
    lines += ["", f"Analytic LLM prefill FLOPs of the scoring pass ({a['frames']} prompts of {a['scoring_prompt_tokens']} "
                  f"tokens) over the answer prefill ({a['answer_prompt_tokens']} tokens) and over the unreduced "
                  f"prefill ({a['unreduced_prompt_tokens']} tokens):", "",
              "| LLM shape | scoring / answer prefill | scoring / unreduced prefill |", "|---|---|---|"]
    for key, label in (("tiny", "tiny (4 layers, width 64)"), ("7b_shape", "Vicuna-7B (Video-LLaVA-7B's LLM)")):
        b = result["analytic"][key]
        lines.append(f"| {label} | {b['scoring_over_answer_prefill_flops']:.2f} "
                     f"| {b['scoring_over_unreduced_prefill_flops']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
