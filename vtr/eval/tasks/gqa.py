"""GQA (Hudson & Manning, 2019) balanced questions, scored by exact match as the official ``eval.py`` does.

``--data DIR`` holds::

    testdev_balanced_questions.json   {"<question id>": {"imageId", "question", "answer", "types": {"structural", "semantic"}}}
    images/<imageId>.jpg

``--split`` picks ``<split>_questions.json`` (``testdev_balanced``, ``val_balanced`` …) when there are
several. The prediction is the output stripped, lower-cased and without trailing periods (LLaVA's
conversion before the official script); accuracy = share equal to ``answer``, overall and per structural
and semantic type, in percent.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vtr.eval.metrics import exact_match, mean_percent
from vtr.eval.tasks.base import Question, Task, field_of, find_file, find_image, read_json


def split_of(path: Path) -> str:
    return path.name[:-len("_questions.json")]


def normalise_short(output: str) -> str:
    """Stripped, lower case, trailing periods removed."""
    return output.strip().rstrip(".").strip().lower()


class GQA(Task):
    name = "gqa"
    layout = "testdev_balanced_questions.json (or <split>_questions.json), images/<imageId>.jpg"

    def load(self, data, split=None):
        path = find_file(data, "*_questions.json", "GQA questions file", split, split_of)
        records = read_json(path)
        if not isinstance(records, dict):
            field_of(records, "questions", path, "the file")  # raises: names the file and what it should be
        folders = [data / "images", data]
        out = []
        for qid, record in records.items():
            where = f"question {qid!r}"
            image_id = field_of(record, "imageId", path, where, str)
            text = field_of(record, "question", path, where, str)
            answer = field_of(record, "answer", path, where, str) if "answer" in record else None
            types = record.get("types") or {}
            image = find_image(folders, f"{image_id}.jpg", path, where)
            out.append(Question(qid, text, image, answer, {"structural": types.get("structural"),
                                                           "semantic": types.get("semantic")}))
        return out

    def normalise(self, output, question):
        return normalise_short(output)

    def question_score(self, prediction, question):
        return float(exact_match(prediction, question.answer))

    def score(self, rows, questions):
        if any(questions[r["question_id"]].answer is None for r in rows):
            return {"accuracy": None, "n": len(rows), "note": "no answers in this split: predictions only"}
        correct, groups = [], {"structural": defaultdict(list), "semantic": defaultdict(list)}
        for r in rows:
            q = questions[r["question_id"]]
            ok = float(exact_match(r["prediction"], q.answer))
            correct.append(ok)
            for kind, by in groups.items():
                if q.info.get(kind):
                    by[q.info[kind]].append(ok)
        out = {"accuracy": mean_percent(correct), "n": len(rows)}
        for kind, by in groups.items():
            if by:
                out[f"per_{kind}"] = {t: mean_percent(v) for t, v in sorted(by.items())}
        return out
