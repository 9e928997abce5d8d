"""The benchmark formats ``vtr eval --task`` reads, one module each, by task name."""
from __future__ import annotations

from vtr.eval.tasks.base import DataError, Question, Task
from vtr.eval.tasks.gqa import GQA
from vtr.eval.tasks.mme import MME
from vtr.eval.tasks.pope import POPE
from vtr.eval.tasks.scienceqa import ScienceQA
from vtr.eval.tasks.shapes import Shapes
from vtr.eval.tasks.textvqa import TextVQA
from vtr.eval.tasks.vqav2 import VQAv2

TASKS: dict[str, type[Task]] = {t.name: t for t in (VQAv2, GQA, TextVQA, POPE, MME, ScienceQA, Shapes)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "get_task", "Task", "Question", "DataError"]
