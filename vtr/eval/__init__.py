"""Benchmark evaluation: VQAv2, GQA, TextVQA, POPE, MME, ScienceQA-IMG and the shapes task, read from their
official files, answered by a (patched) model in batches, scored with each benchmark's official metric.

``vtr eval`` and ``python -m benchmarks.vqa`` run :func:`vtr.eval.command.main`. The parts:
``tasks/`` (one module per benchmark format), ``normalize`` and ``metrics`` (the official answer
processing and scorers), ``prompts`` (instruction + the model's chat template), ``runner`` (batched,
resumable, sharded generation), ``store`` (prediction files) and ``report`` (metrics, summary, plot).
"""
from vtr.eval.prompts import build_prompt
from vtr.eval.tasks import TASKS, get_task

__all__ = ["TASKS", "get_task", "build_prompt"]
