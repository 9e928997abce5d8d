"""VQAv2 (Goyal et al., 2017) in its official release layout, scored with the official soft accuracy.

``--data DIR`` holds::

    v2_OpenEnded_mscoco_val2014_questions.json   {"data_subtype": "val2014", "questions": [{"question_id", "image_id", "question"}]}
    v2_mscoco_val2014_annotations.json           {"annotations": [{"question_id", "answers": [{"answer"} x 10], "answer_type"}]}
    val2014/COCO_val2014_000000000042.jpg        (or images/…, or the folder itself)

``--split`` picks the questions file by its subtype (``val2014``, ``test-dev2015`` …) when there are
several. Test splits have no annotations file: predictions are written, metrics are ``None`` (submit
``predictions.jsonl``'s ``prediction`` column to the evaluation server).
Accuracy = mean over questions of :func:`~vtr.eval.metrics.vqav2_accuracy` on the processed prediction,
overall and per answer type (``yes/no``, ``number``, ``other``), in percent.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vtr.eval.metrics import mean_percent, vqav2_accuracy
from vtr.eval.normalize import process_answer
from vtr.eval.tasks.base import DataError, Question, Task, field_of, find_file, find_image, read_json

QUESTIONS = "v2_OpenEnded_mscoco_*_questions.json"


def subtype(path: Path) -> str:
    return path.name[len("v2_OpenEnded_mscoco_"):-len("_questions.json")]


def image_folder_name(data_subtype: str) -> str:
    """Images of ``test-dev2015`` live with the test images (``test2015``)."""
    return "test2015" if data_subtype.startswith("test") else data_subtype


class VQAv2(Task):
    name = "vqav2"
    layout = ("v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json (not for test "
              "splits), <split>/COCO_<split>_<image_id:012d>.jpg")

    def load(self, data, split=None):
        questions_path = find_file(data, QUESTIONS, "VQAv2 questions file", split, subtype)
        questions = read_json(questions_path)
        records = field_of(questions, "questions", questions_path, "the file", list)
        data_subtype = questions.get("data_subtype", subtype(questions_path)) if isinstance(questions, dict) else ""
        answers = self.load_answers(data, data_subtype)
        images = image_folder_name(data_subtype)
        folders = [data / images, data / "images", data]
        out = []
        for i, record in enumerate(records):
            where = f"questions[{i}]"
            qid = field_of(record, "question_id", questions_path, where, (int, str))
            image_id = field_of(record, "image_id", questions_path, where, int)
            text = field_of(record, "question", questions_path, where, str)
            image = find_image(folders, f"COCO_{images}_{image_id:012d}.jpg", questions_path, where)
            human, answer_type = None, None
            if answers is not None:
                if qid not in answers:
                    raise DataError(f"{self.annotations_path}: no annotation for question_id {qid} of {questions_path.name}")
                human, answer_type = answers[qid]
            out.append(Question(qid, text, image, human, {"answer_type": answer_type}))
        return out

    def load_answers(self, data: Path, data_subtype: str) -> dict | None:
        """``{question_id: (ten answers, answer_type)}``, or ``None`` for a split without annotations."""
        path = data / f"v2_mscoco_{data_subtype}_annotations.json"
        self.annotations_path = path
        if not path.exists():
            if data_subtype.startswith("test"):
                return None
            raise DataError(f"{path}: file not found (the annotations of the {data_subtype} questions)")
        annotations = field_of(read_json(path), "annotations", path, "the file", list)
        out = {}
        for i, record in enumerate(annotations):
            where = f"annotations[{i}]"
            qid = field_of(record, "question_id", path, where, (int, str))
            answers = field_of(record, "answers", path, where, list)
            texts = [field_of(a, "answer", path, f"{where}.answers[{j}]", str) for j, a in enumerate(answers)]
            if not texts:
                raise DataError(f"{path}: {where}: field 'answers' is empty")
            out[qid] = (texts, record.get("answer_type", "other"))
        return out

    def normalise(self, output, question):
        return process_answer(output)

    def question_score(self, prediction, question):
        return vqav2_accuracy(prediction, question.answer) if question.answer is not None else 0.0

    def score(self, rows, questions):
        if any(questions[r["question_id"]].answer is None for r in rows):
            return {"accuracy": None, "n": len(rows), "note": "no annotations for this split: predictions only"}
        by_type = defaultdict(list)
        scores = []
        for r in rows:
            q = questions[r["question_id"]]
            s = vqav2_accuracy(r["prediction"], q.answer)
            scores.append(s)
            by_type[q.info.get("answer_type") or "other"].append(s)
        return {"accuracy": mean_percent(scores), "n": len(rows),
                "per_answer_type": {t: mean_percent(v) for t, v in sorted(by_type.items())}}
