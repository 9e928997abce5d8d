"""POPE (Li et al., 2023): object hallucination as yes/no questions, three negative-sampling splits.

``--data DIR`` holds::

    coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json
        one JSON object per line: {"question_id", "image", "text", "label": "yes" | "no"}
    val2014/COCO_val2014_000000310196.jpg   (or images/…, or the folder itself)

All splits present are run (``--split random`` runs one). Official ids repeat across the split files, so
``question_id`` here is ``<split>/<id>``. The output is parsed as LLaVA's ``eval_pope.py`` does
(:func:`~vtr.eval.metrics.parse_yes_no_pope`); accuracy, precision, recall, F1 and yes-ratio per split and
their mean over the splits, in percent.
"""
from __future__ import annotations

import json

from vtr.eval.metrics import binary_metrics, parse_yes_no_pope
from vtr.eval.tasks.base import DataError, Question, Task, field_of

SPLITS = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


class POPE(Task):
    name = "pope"
    instruction = "Please answer yes or no."
    max_new_tokens = 8
    headline = ("mean.f1", "mean.accuracy")
    layout = "coco_pope_{random,popular,adversarial}.json (JSON lines), val2014/<image>"

    def load(self, data, split=None):
        if data is None or not data.is_dir():
            raise DataError(f"--data: {data} is not a folder (expected {self.layout})")
        if split is not None and split not in SPLITS:
            raise DataError(f"--split {split}: POPE splits are {', '.join(SPLITS)}")
        splits = [s for s in SPLITS if (data / f"coco_pope_{s}.json").is_file() and split in (None, s)]
        if not splits:
            raise DataError(f"{data}: no coco_pope_<split>.json found (splits: {', '.join(SPLITS)})")
        folders = [data / "val2014", data / "images", data]
        out = []
        for s in splits:
            path = data / f"coco_pope_{s}.json"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"line {n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: {where} is not a JSON object ({error}); POPE files hold one per line") from None
                qid = field_of(record, "question_id", path, where, (int, str))
                text = field_of(record, "text", path, where, str)
                name = field_of(record, "image", path, where, str)
                label = field_of(record, "label", path, where, str)
                if label not in ("yes", "no"):
                    raise DataError(f"{path}: {where}: field 'label' should be 'yes' or 'no', got {label!r}")
                image = next((f / name for f in folders if (f / name).is_file()), None)
                if image is None:
                    raise DataError(f"{path}: {where}: image {name!r} not found (looked in "
                                    f"{', '.join(map(str, folders))})")
                out.append(Question(f"{s}/{qid}", text, image, label, {"split": s}))
        return out

    def normalise(self, output, question):
        return parse_yes_no_pope(output)

    def question_score(self, prediction, question):
        return float(prediction == question.answer)

    def score(self, rows, questions):
        out = {}
        for s in SPLITS:
            mine = [r for r in rows if questions[r["question_id"]].info["split"] == s]
            if mine:
                out[s] = binary_metrics([r["prediction"] for r in mine], [questions[r["question_id"]].answer for r in mine])
        present = [out[s] for s in SPLITS if s in out]
        out["mean"] = {m: sum(p[m] for p in present) / len(present) for m in METRICS} if present else {}
        out["n"] = len(rows)
        return out
