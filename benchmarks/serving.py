"""Serving reduced visual tokens with vLLM: prompt tokens, request throughput and time to first token
with and without reduction (``python -m benchmarks.serving``; needs ``.venv-vllm``, see ``make test-vllm``).

This process (vtr's environment) exports the held-out shapes questions with :func:`vtr.serving.export` per
budget on the shipped tiny LLaVA, timing the front-end (vision tower + reducer + projector); the engine half
(:mod:`benchmarks.serving_engine`) runs in ``.venv-vllm`` on one vLLM CPU engine. Writes the ``serving``
section of BENCHMARKS.md and ``benchmarks/results/serving.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: budget name -> (reducer, keep); "unreduced" is keep=1.0 (the identity), all 144 rows
BUDGETS = {"unreduced": ("fastervlm", 1.0), "fastervlm keep=36 (25%)": ("fastervlm", 36),
           "fastervlm keep=14 (10%)": ("fastervlm", 14)}


def export_budgets(n: int):
    """Per budget, the exported prompts and the front-end's seconds per request (median over requests of the
    best of 3 passes)."""
    import vtr.serving as serving
    from integration.vllm.make_cases import load, shapes_inputs

    model, processor = load()
    requests = [shapes_inputs(processor, i, 1)[0] for i in range(n)]  # processor outputs, built outside the timing
    cases, frontend = {}, {}
    for name, (reducer, keep) in BUDGETS.items():
        per_request = [float("inf")] * n
        for _ in range(3):
            prompts = []
            for i, inputs in enumerate(requests):  # one request at a time, as a front-end serves them
                start = time.perf_counter()
                prompts += serving.export(model, inputs, reducer, keep=keep, positions="renumber")
                per_request[i] = min(per_request[i], time.perf_counter() - start)
        frontend[name] = statistics.median(per_request)  # robust to the shared machine's bursts
        cases[name] = {"prompt_token_ids": [p.prompt_token_ids for p in prompts],
                       "image_embeds": [p.image_embeds for p in prompts]}
    return cases, frontend, prompts[0].placeholder_id


def section(result: dict) -> str:
    from benchmarks.report import machine_line, markdown_table

    rows = []
    base = result["engine"]["results"]["unreduced"]
    for name in BUDGETS:
        r = result["engine"]["results"][name]
        tokens = sum(r["prompt_tokens"]) / len(r["prompt_tokens"])
        rows.append([name, f"{tokens:.0f}", f"{r['requests_per_s']:.1f}", f"{r['requests_per_s'] / base['requests_per_s']:.2f}×",
                     f"{r['ttft_median_s'] * 1e3:.1f}", f"{result['frontend_s'][name] * 1e3:.1f}"])
    table = markdown_table(["budget", "prompt tokens (mean)", "requests / s (CPU)", "vs unreduced",
                            "time to first token, ms (CPU, median)", "front-end export, ms / request (CPU)"], rows)
    v = result["engine"]["versions"]
    return (
        "## Serving with vLLM: prompt tokens, throughput, time to first token (`python -m benchmarks.serving`)\n\n"
        f"**CPU figures** (vLLM {v['vllm']} CPU backend, torch {v['torch']}, transformers {v['transformers']}, float32), "
        f"on the shipped tiny LLaVA (`vtr/shapes/tiny-llava-shapes`, 144 visual tokens, 4-layer 128-wide LLM) and "
        f"{result['n_requests']} held-out shapes questions, one image each. vtr exports each request's kept rows "
        "(`vtr.serving.export`, FasterVLM, `positions=\"renumber\"`), vLLM gets them as `image_embeds`. Requests / s: "
        f"all requests in one `LLM.generate` call (greedy, {result['max_new']} new tokens, end of sequence ignored), "
        f"best of {result['rounds']} rounds. Time to first token: one request alone, `max_tokens=1`, median over "
        f"{result['ttft_prompts']} requests × {result['rounds']} rounds. Front-end: vision tower + reducer + projector "
        "per request in vtr's environment (processor outputs built beforehand; batch 1; median over requests of each one's best of 3 passes). The LLM here is so small that fixed per-request "
        "engine costs weigh more than prefill length; on a real 7B LLaVA prefill dominates and the prompt-token column "
        "is the figure that carries over.\n\n"
        f"{table}\n\n{machine_line(result['machine'])}\n"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import machine_info, replace_section, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--ttft-requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new", type=int, default=8)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--reuse-engine", action="store_true",
                        help="re-time the front-end only; take the engine figures from build/vllm/bench_engine.json")
    args = parser.parse_args(argv)
    if not Path(args.vllm_python).exists():
        parser.exit(2, f"benchmarks.serving: error: {args.vllm_python} is missing; build it with `make test-vllm`\n")
    torch.manual_seed(0)
    cases, frontend, placeholder = export_budgets(args.requests)
    work = ROOT / "build" / "vllm"
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"checkpoint": str(ROOT / "vtr" / "shapes" / "tiny-llava-shapes"), "cases": cases, "placeholder_id": placeholder,
                "max_new": args.max_new, "rounds": args.rounds, "ttft_prompts": args.ttft_requests}, work / "bench_cases.pt")
    if not args.reuse_engine:  # --reuse-engine: rewrite the section from the last engine run (same cases)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([args.vllm_python, str(ROOT / "benchmarks" / "serving_engine.py"), str(work / "bench_cases.pt"),
                        str(work / "bench_engine.json")], check=True, env=env)
    engine = json.loads((work / "bench_engine.json").read_text())
    result = {"machine": machine_info(dtype="float32", frontend="vtr env, batch 1"), "n_requests": args.requests,
              "ttft_prompts": args.ttft_requests, "rounds": args.rounds, "max_new": args.max_new,
              "frontend_s": frontend, "engine": engine, "command": " ".join([sys.executable, "-m", "benchmarks.serving", *(argv or sys.argv[1:])])}
    write_json(args.json, result)
    replace_section(args.md, "serving", section(result))
    print(section(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
