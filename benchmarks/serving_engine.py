"""The engine half of ``python -m benchmarks.serving``: runs in ``.venv-vllm`` (vLLM CPU), not in vtr's env.

    .venv-vllm/bin/python benchmarks/serving_engine.py CASES.pt OUT.json

Per budget in CASES.pt (exported by :mod:`benchmarks.serving` with :func:`vtr.serving.export`), on one offline
``LLM`` engine:

- throughput: all prompts in one ``generate`` call (``group_by_rows`` gives one group per budget), wall
  time of the call, best of ``rounds`` -> requests / s;
- time to first token: each prompt alone with ``max_tokens=1`` (prefill + one sampled token, nothing
  queued before it), median over prompts and rounds.
Budgets are interleaved within each round, so a busier stretch of the shared machine hits all alike.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    import torch
    import transformers
    import vllm
    from vllm import LLM, SamplingParams

    import vtr.serving as serving

    cases_path, out_path = argv
    data = torch.load(cases_path, weights_only=False)
    llm = LLM(data["checkpoint"], enable_mm_embeds=True, limit_mm_per_prompt={"image": 0}, dtype="float32",
              max_model_len=512, seed=0, gpu_memory_utilization=data.get("memory", 0.1))
    budgets = {name: [serving.ReducedPrompt(ids, embeds, data["placeholder_id"])
                      for ids, embeds in zip(case["prompt_token_ids"], case["image_embeds"])]
               for name, case in data["cases"].items()}
    decode = SamplingParams(temperature=0.0, max_tokens=data["max_new"], ignore_eos=True)
    first = SamplingParams(temperature=0.0, max_tokens=1)
    results = {name: {"batch_s": [], "ttft_s": [], "prompt_tokens": [], "engine_prompt_tokens": []} for name in budgets}
    for name, prompts in budgets.items():  # warm-up: first calls compile and allocate
        llm.generate([serving.offline_prompt(p) for p in prompts], decode, use_tqdm=False)
    for _ in range(data["rounds"]):
        for name, prompts in budgets.items():
            groups = serving.group_by_rows(prompts)
            start = time.perf_counter()
            outputs = [o for g in groups
                       for o in llm.generate([serving.offline_prompt(prompts[i]) for i in g], decode, use_tqdm=False)]
            results[name]["batch_s"].append(time.perf_counter() - start)
            results[name]["engine_prompt_tokens"] = [len(o.prompt_token_ids) for o in outputs]
            for p in prompts[: data["ttft_prompts"]]:
                start = time.perf_counter()
                llm.generate([serving.offline_prompt(p)], first, use_tqdm=False)
                results[name]["ttft_s"].append(time.perf_counter() - start)
    for name, prompts in budgets.items():
        r = results[name]
        r["prompt_tokens"] = [p.n_prompt_tokens for p in prompts]
        r["n_requests"] = len(prompts)
        r["requests_per_s"] = len(prompts) / min(r["batch_s"])
        r["ttft_median_s"] = statistics.median(r["ttft_s"])
    versions = {"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version()}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"results": results, "versions": versions}, f, indent=1)
    return 0


if __name__ == "__main__":  # vLLM's engine process is spawned: the guard is required
    sys.exit(main(sys.argv[1:]))
