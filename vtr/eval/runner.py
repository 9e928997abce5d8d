"""Answering a benchmark's questions with a (patched) model: batched, resumable, sharded across processes.

One *run* is one (reducer, keep) on one task; ``reducer=None`` is the unpruned model. Questions go in
left-padded batches through greedy ``generate``; each answered batch is appended to the run's
predictions file at once. Under ``accelerate launch --num_processes N`` process ``r`` answers questions
``r, r + N, …`` into its own shard; after a barrier the main process merges the shards and scores.
Since batch-N equals batch-1 (vtr's contract, and greedy decoding), the predictions do not depend on the
batch size or the number of processes.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

import vtr
from vtr.eval import store
from vtr.eval.prompts import build_prompt
from vtr.eval.tasks.base import Question, Task
from vtr.ops.flops import prefill_flops


@dataclass(frozen=True)
class RunSpec:
    """One run: ``reducer`` (``None``: unpruned) at ``keep``, with the reducer's extra ``settings``."""

    reducer: str | None
    keep: float | int = 1.0
    settings: tuple = ()

    @property
    def label(self) -> str:
        return "unpruned" if self.reducer is None else f"{self.reducer}@{self.keep}"

    def folder(self, root: Path) -> Path:
        return root / "unpruned" if self.reducer is None else root / self.reducer / f"keep_{self.keep}"

    def patched(self, model):
        if self.reducer is None:
            return contextlib.nullcontext(model)
        return vtr.patched(model, self.reducer, keep=self.keep, **dict(self.settings))


class Processes:
    """This process's place among the processes ``accelerate launch`` (or ``torchrun``) started."""

    def __init__(self) -> None:
        import os

        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            # without a GPU accelerate needs cpu=True to pick the gloo backend instead of running alone
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1
        if self.state:
            self.device = self.state.device
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Wait for every process, then leave the process group (no warning at exit)."""
        if self.state is not None:
            self.state.wait_for_everyone()
            self.state.destroy_process_group()


def row_accounting(model, inputs, b: int, text_config, placeholder_ids: Sequence[int]) -> dict:
    """Visual tokens and analytic prefill FLOPs of batch row ``b`` of the last call, from ``model.vtr.stats``.

    Row ``b``'s unpadded prompt has ``n`` tokens, ``v_in`` of them visual; decoder layer ``l`` processed
    ``n - v_in + v_l`` tokens (``v_l``: ``stats.visual_tokens_per_layer[b][l]``). FLOPs before / after are
    :func:`vtr.ops.flops.prefill_flops` of those counts — per row, so they do not depend on the batch.
    """
    n_layers = text_config.num_hidden_layers
    length = int(inputs["attention_mask"][b].sum())
    if vtr.is_patched(model):
        stats = model.vtr.stats
        v_in, per_layer = int(stats.visual_tokens_in[b]), [int(v) for v in stats.visual_tokens_per_layer[b]]
    else:
        v_in = int(torch.isin(inputs["input_ids"][b], torch.tensor(placeholder_ids)).sum())
        per_layer = [v_in] * n_layers
    before = prefill_flops(text_config, [length] * n_layers)
    after = prefill_flops(text_config, [length - v_in + v for v in per_layer])
    return {"visual_tokens": per_layer[0] if per_layer else v_in, "visual_tokens_in": v_in,
            "visual_tokens_layer_mean": sum(per_layer) / len(per_layer) if per_layer else float(v_in),
            "flops_before": before, "flops_after": after}


@torch.no_grad()
def answer(model, processor, task: Task, questions: Sequence[Question], instruction: str, max_new_tokens: int,
           device) -> list[dict]:
    """One left-padded greedy ``generate`` over ``questions``; one prediction row per question."""
    from vtr.adapters import adapter_for

    adapter = adapter_for(model)
    prompts = [build_prompt(processor, q.text, instruction) for q in questions]
    inputs = processor(images=[q.load_image() for q in questions], text=prompts, return_tensors="pt", padding=True)
    inputs = inputs.to(device)
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    seconds = (time.perf_counter() - start) / len(questions)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    prompt = {"input_ids": inputs["input_ids"].cpu(), "attention_mask": inputs["attention_mask"].cpu()}
    rows = []
    for b, (q, text) in enumerate(zip(questions, texts)):
        output = text.strip()
        cost = row_accounting(model, prompt, b, adapter.text_config, adapter.placeholder_ids())
        rows.append({"question_id": q.question_id, "output": output, "prediction": task.normalise(output, q),
                     "answer": q.answer, **cost, "seconds": seconds})
    return rows


def run(model, processor, task: Task, questions: Sequence[Question], spec: RunSpec, root: Path, *, batch: int,
        instruction: str, max_new_tokens: int, resume: bool, procs: Processes) -> list[dict] | None:
    """Answer every question of ``questions`` not yet in ``spec``'s folder under ``root``; returns all rows
    in question order on the main process (``None`` on the others)."""
    from tqdm import tqdm

    folder = spec.folder(root)
    done = store.done_rows(folder) if resume and folder.exists() else {}
    mine = list(questions[procs.rank::procs.world])
    todo = [q for q in mine if q.question_id not in done]
    scored = [task.question_score(done[q.question_id]["prediction"], q) for q in mine if q.question_id in done]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{task.name} {spec.label}", unit="q",
               file=sys.stderr, disable=not procs.is_main, dynamic_ncols=True)
    if scored:
        bar.set_postfix_str(f"acc {100 * sum(scored) / len(scored):.1f}")
    writer = store.Writer(folder, procs.rank, procs.world) if todo else None
    try:
        with spec.patched(model):
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                rows = answer(model, processor, task, chunk, instruction, max_new_tokens, procs.device)
                writer.write(rows)
                scored += [task.question_score(r["prediction"], q) for r, q in zip(rows, chunk)]
                bar.update(len(chunk))
                bar.set_postfix_str(f"acc {100 * sum(scored) / len(scored):.1f}")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    procs.barrier()
    if not procs.is_main:
        return None
    return store.merge(folder, [q.question_id for q in questions])


def summarise(task: Task, rows: Sequence[dict], questions: dict[Any, Question]) -> dict:
    """The official metrics plus the cost of the run: mean visual tokens, FLOPs ratio, seconds."""
    before = sum(r["flops_before"] for r in rows)
    after = sum(r["flops_after"] for r in rows)
    n = max(len(rows), 1)
    return {
        "metrics": task.score(rows, questions),
        "n": len(rows),
        "visual_tokens_mean": sum(r["visual_tokens"] for r in rows) / n,
        "visual_tokens_in_mean": sum(r["visual_tokens_in"] for r in rows) / n,
        "visual_tokens_layer_mean": sum(r["visual_tokens_layer_mean"] for r in rows) / n,
        "flops_ratio": after / before if before else 1.0,
        "seconds_per_question": sum(r["seconds"] for r in rows) / n,
    }
