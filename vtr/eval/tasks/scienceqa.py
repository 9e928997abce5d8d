"""ScienceQA-IMG (Lu et al., 2022): the multiple-choice questions of a split that come with an image.

``--data DIR`` holds the official release::

    problems.json      {"<pid>": {"question", "choices": [...], "answer": <index>, "hint", "image": "image.png" | null, "subject" …}}
    pid_splits.json    {"train": [...], "val": [...], "test": [...], …}
    images/<split>/<pid>/image.png

``--split`` picks the split (default ``test``, the IMG numbers papers report). The prompt is the hint as
``Context:``, the question and lettered options (``A. …``); the output's option letter is parsed with
:func:`~vtr.eval.metrics.parse_choice` (no letter found counts as wrong and is counted in ``unparsed``).
Accuracy in percent, overall and per subject.
"""
from __future__ import annotations

from collections import defaultdict

from vtr.eval.metrics import mean_percent, parse_choice
from vtr.eval.tasks.base import DataError, Question, Task, field_of, read_json

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def format_question(question: str, choices: list[str], hint: str = "") -> str:
    """``Context: <hint>\\n<question>\\nA. <choice>\\nB. …`` (no context line without a hint)."""
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{context}{question}\n{options}"


class ScienceQA(Task):
    name = "scienceqa"
    instruction = "Answer with the option's letter from the given choices directly."
    max_new_tokens = 8
    layout = "problems.json, pid_splits.json, images/<split>/<pid>/image.png"

    def load(self, data, split=None):
        split = split or "test"
        if data is None or not data.is_dir():
            raise DataError(f"--data: {data} is not a folder (expected {self.layout})")
        problems_path, splits_path = data / "problems.json", data / "pid_splits.json"
        problems, splits = read_json(problems_path), read_json(splits_path)
        if not isinstance(problems, dict):
            raise DataError(f"{problems_path}: should map problem ids to problems, got {type(problems).__name__}")
        pids = field_of(splits, split, splits_path, "the file", list)
        out = []
        for pid in pids:
            pid = str(pid)
            if pid not in problems:
                raise DataError(f"{splits_path}: split {split!r} lists problem {pid!r}, which {problems_path.name} lacks")
            record = problems[pid]
            where = f"problem {pid!r}"
            if not field_of(record, "image", problems_path, where, (str, type(None))):
                continue  # ScienceQA-IMG: only the questions with an image
            question = field_of(record, "question", problems_path, where, str)
            choices = field_of(record, "choices", problems_path, where, list)
            answer = field_of(record, "answer", problems_path, where, int)
            if not 0 <= answer < len(choices) or len(choices) > len(LETTERS):
                raise DataError(f"{problems_path}: {where}: field 'answer' is {answer}, but there are {len(choices)} choices")
            image = data / "images" / split / pid / record["image"]
            if not image.is_file():
                raise DataError(f"{problems_path}: {where}: image not found at {image}")
            text = format_question(question, [str(c) for c in choices], str(record.get("hint") or "").strip())
            out.append(Question(pid, text, image, LETTERS[answer],
                                {"n_choices": len(choices), "subject": record.get("subject")}))
        return out

    def normalise(self, output, question):
        return parse_choice(output, question.info["n_choices"])

    def question_score(self, prediction, question):
        return float(prediction == question.answer)

    def score(self, rows, questions):
        by_subject = defaultdict(list)
        correct = []
        for r in rows:
            q = questions[r["question_id"]]
            ok = float(r["prediction"] == q.answer)
            correct.append(ok)
            by_subject[q.info.get("subject") or "unknown"].append(ok)
        return {"accuracy": mean_percent(correct), "n": len(rows), "unparsed": sum(r["prediction"] == "" for r in rows),
                "per_subject": {s: mean_percent(v) for s, v in sorted(by_subject.items())}}
