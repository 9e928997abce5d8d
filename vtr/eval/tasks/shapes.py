"""The project's procedural shapes VQA (:mod:`vtr.shapes`), so the whole harness runs on the shipped model.

No files: the questions are the fixed held-out test set (``vtr.shapes.test_set()``, 1,250 questions over
five types, any prefix balanced; ``--limit`` takes a prefix), the images are rendered on the fly. ``--data``
is not used. No instruction is added (the model was trained on the bare question). Exact match of the
stripped, lower-cased output with the single-word answer; accuracy overall and per question type.
"""
from __future__ import annotations

from collections import defaultdict
from functools import partial

from vtr.eval.metrics import exact_match, mean_percent
from vtr.eval.tasks.base import DataError, Question, Task
from vtr.eval.tasks.gqa import normalise_short


class Shapes(Task):
    name = "shapes"
    instruction = ""
    max_new_tokens = 4
    layout = "nothing (the questions and images are generated)"

    def load(self, data, split=None):
        from vtr.shapes import render_pil, test_set

        if split not in (None, "test"):
            raise DataError(f"--split {split}: the shapes task has one split, test")
        return [Question(it.index, it.question, partial(render_pil, it.scene), it.answer, {"type": it.qtype})
                for it in test_set()]

    def normalise(self, output, question):
        return normalise_short(output)

    def question_score(self, prediction, question):
        return float(exact_match(prediction, question.answer))

    def score(self, rows, questions):
        by_type = defaultdict(list)
        for r in rows:
            q = questions[r["question_id"]]
            by_type[q.info["type"]].append(float(exact_match(r["prediction"], q.answer)))
        all_scores = [s for v in by_type.values() for s in v]
        return {"accuracy": mean_percent(all_scores), "n": len(rows),
                "per_type": {t: mean_percent(v) for t, v in by_type.items()}}
