"""TextVQA (Singh et al., 2019) in its official release layout, scored with the VQA accuracy.

``--data DIR`` holds::

    TextVQA_0.5.1_val.json          {"data": [{"question_id", "question", "image_id", "answers": [10 strings]}]}
    train_images/<image_id>.jpg     (the official archive puts val images there; test_images/ or images/ also work)

``--split`` picks ``TextVQA_0.5.1_<split>.json`` when there are several. Accuracy is the M4C / LLaVA
evaluator's: prediction and human answers processed alike, then the leave-one-out VQA accuracy
(:func:`~vtr.eval.metrics.textvqa_accuracy`), in percent. The test split has no answers: predictions only.
The optional OCR-token hint LLaVA-1.5 adds to its prompt comes from a separate OCR file and is not used.
"""
from __future__ import annotations

from pathlib import Path

from vtr.eval.metrics import mean_percent, textvqa_accuracy
from vtr.eval.normalize import process_answer
from vtr.eval.tasks.base import DataError, Question, Task, field_of, find_file, find_image, read_json

PATTERN = "TextVQA_0.5.1_*.json"


def split_of(path: Path) -> str:
    return path.stem[len("TextVQA_0.5.1_"):]


class TextVQA(Task):
    name = "textvqa"
    layout = "TextVQA_0.5.1_<split>.json, train_images/<image_id>.jpg"

    def load(self, data, split=None):
        path = find_file(data, PATTERN, "TextVQA annotation file", split, split_of)
        records = field_of(read_json(path), "data", path, "the file", list)
        folders = [data / "train_images", data / "test_images", data / "images", data]
        out = []
        for i, record in enumerate(records):
            where = f"data[{i}]"
            qid = field_of(record, "question_id", path, where, (int, str))
            text = field_of(record, "question", path, where, str)
            image_id = field_of(record, "image_id", path, where, str)
            image = find_image(folders, f"{image_id}.jpg", path, where)
            answers = record.get("answers")
            if answers is not None:
                if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                    raise DataError(f"{path}: {where}: field 'answers' should be a non-empty list of strings")
            out.append(Question(qid, text, image, answers))
        return out

    def normalise(self, output, question):
        return process_answer(output)

    def question_score(self, prediction, question):
        return textvqa_accuracy(prediction, question.answer) if question.answer is not None else 0.0

    def score(self, rows, questions):
        if any(questions[r["question_id"]].answer is None for r in rows):
            return {"accuracy": None, "n": len(rows), "note": "no answers in this split: predictions only"}
        return {"accuracy": mean_percent(textvqa_accuracy(r["prediction"], questions[r["question_id"]].answer)
                                         for r in rows), "n": len(rows)}
