"""MME (Fu et al., 2023): 14 yes/no subtasks, two questions per image, scored as the official ``calculation.py``.

``--data DIR`` holds either the release folders::

    <subtask>/images/<name>.jpg + <subtask>/questions_answers_YN/<name>.txt   (artwork, celebrity, landmark, posters, scene)
    <subtask>/<name>.png + <subtask>/<name>.txt                                (the other subtasks)
        each .txt: one "question<TAB>Yes|No" line per question about that image

or the single-file TSV form (VLMEvalKit's ``MME.tsv``): columns ``index``, ``image`` (base64, or the
``index`` of an earlier row with the same image), ``question``, ``answer``, ``category`` (the subtask) and
optionally ``image_path``. Outputs are parsed with :func:`~vtr.eval.metrics.parse_yes_no_mme`. Per subtask:
``acc``, ``acc_plus`` (both questions of an image right) and ``score = acc + acc_plus``; ``perception`` and
``cognition`` are the sums of the scores of their subtasks (max 2000 and 800 with all present; a total is
``None`` when none of its subtasks is in the data).
"""
from __future__ import annotations

import base64
import csv
import io
import sys
from pathlib import Path

from PIL import Image

from vtr.eval.metrics import mme_subtask, parse_yes_no_mme
from vtr.eval.tasks.base import DataError, Question, Task

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
TSV_COLUMNS = ("index", "image", "question", "answer", "category")


def parse_label(value: str, path: Path, where: str) -> str:
    label = value.strip().lower()
    if label not in ("yes", "no"):
        raise DataError(f"{path}: {where}: the answer should be Yes or No, got {value!r}")
    return label


class MME(Task):
    name = "mme"
    instruction = "Please answer yes or no."
    max_new_tokens = 8
    headline = ("perception", "cognition")
    layout = "one folder per subtask (images + question/answer .txt files), or MME.tsv"

    def load(self, data, split=None):
        if data is None or not data.is_dir():
            raise DataError(f"--data: {data} is not a folder (expected {self.layout})")
        folders = [data / s for s in SUBTASKS if (data / s).is_dir() and (split in (None, s))]
        if folders:
            return [q for folder in folders for q in self.load_folder(folder)]
        tables = sorted(data.glob("*.tsv"))
        if len(tables) == 1:
            return self.load_tsv(tables[0], split)
        if len(tables) > 1:
            raise DataError(f"{data}: several .tsv files ({', '.join(p.name for p in tables)}); keep one")
        raise DataError(f"{data}: no MME subtask folder ({', '.join(SUBTASKS)}) and no .tsv file found")

    def load_folder(self, folder: Path) -> list[Question]:
        subtask = folder.name
        text_folder = folder / "questions_answers_YN"
        image_folder = folder / "images"
        if not text_folder.is_dir():
            text_folder = image_folder = folder
        out = []
        for txt in sorted(text_folder.glob("*.txt")):
            image = next((image_folder / (txt.stem + s) for s in IMAGE_SUFFIXES if (image_folder / (txt.stem + s)).is_file()), None)
            if image is None:
                raise DataError(f"{txt}: no image {txt.stem}{{{','.join(IMAGE_SUFFIXES)}}} in {image_folder}")
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2:
                    raise DataError(f"{txt}: line {n} should be 'question<TAB>answer', got {line!r:.80}")
                label = parse_label(parts[1], txt, f"line {n}")
                out.append(Question(f"{subtask}/{image.name}/{n}", parts[0].strip(), image, label,
                                    {"subtask": subtask, "image": image.name}))
        if not out:
            raise DataError(f"{folder}: no question files (*.txt) found")
        return out

    def load_tsv(self, path: Path, split=None) -> list[Question]:
        csv.field_size_limit(sys.maxsize)  # base64 images are long cells
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            raise DataError(f"{path}: no rows")
        missing = [c for c in TSV_COLUMNS if c not in rows[0]]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(TSV_COLUMNS)})")
        encoded = {r["index"]: r["image"] for r in rows if len(r["image"]) > 64}
        out = []
        for n, r in enumerate(rows, start=2):  # line 1 is the header
            where = f"line {n} (index {r['index']})"
            if r["category"] not in SUBTASKS:
                raise DataError(f"{path}: {where}: field 'category' is {r['category']!r}; MME subtasks: {', '.join(SUBTASKS)}")
            if split not in (None, r["category"]):
                continue
            source = r["image"] if len(r["image"]) > 64 else r["image"].strip()
            if len(source) <= 64 and source not in encoded:
                raise DataError(f"{path}: {where}: field 'image' refers to index {source!r}, which holds no image")
            key = r.get("image_path") or (source if len(source) <= 64 else r["index"])
            cell = source if len(source) > 64 else encoded[source]
            out.append(Question(f"{r['category']}/{key}/{r['index']}", r["question"].strip(), decoder(cell, path, where),
                                parse_label(r["answer"], path, where), {"subtask": r["category"], "image": key}))
        return out

    def normalise(self, output, question):
        return parse_yes_no_mme(output)

    def question_score(self, prediction, question):
        return float(prediction == question.answer)

    def score(self, rows, questions):
        subtasks = {}
        for name in SUBTASKS:
            mine = [r for r in rows if questions[r["question_id"]].info["subtask"] == name]
            if mine:
                subtasks[name] = mme_subtask([r["prediction"] == questions[r["question_id"]].answer for r in mine],
                                             [questions[r["question_id"]].info["image"] for r in mine])
        def total(names):
            present = [subtasks[s]["score"] for s in names if s in subtasks]
            return sum(present) if present else None
        return {"perception": total(PERCEPTION), "cognition": total(COGNITION), "subtasks": subtasks, "n": len(rows)}


def decoder(cell: str, path: Path, where: str):
    """A callable decoding one base64 image cell when the image is needed (a TSV holds thousands)."""
    def load() -> Image.Image:
        try:
            return Image.open(io.BytesIO(base64.b64decode(cell)))
        except (ValueError, OSError) as error:
            raise DataError(f"{path}: {where}: field 'image' is not a base64 image ({error})") from None
    return load
