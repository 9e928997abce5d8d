"""What every benchmark format provides: its questions, the normalised prediction and the official score.

A :class:`Task` reads a benchmark's files from disk in their official layout (``load``), turns a model's
raw output into the prediction the official scorer compares (``normalise``), scores one question for the
running metric of the progress bar (``question_score``) and scores the whole run (``score``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image


class DataError(ValueError):
    """A benchmark file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Question:
    """One question of a benchmark.

    Attributes:
        question_id: unique within the task (POPE and MME ids are prefixed with their split / subtask,
            since the official ids repeat across files).
        text: the question as the model sees it, before the task's instruction (options included).
        image: an image file, or a callable returning a PIL image (scenes, base64 TSV cells).
        answer: what the scorer compares with (ten human answers, a word, ``yes``/``no``, a letter), or
            ``None`` for splits without public ground truth.
        info: grouping fields the score needs (``split``, ``subtask``, ``image``, ``type`` …).
    """

    question_id: Any
    text: str
    image: Any
    answer: Any
    info: dict = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        if callable(self.image):
            return self.image().convert("RGB")
        try:
            with Image.open(self.image) as picture:
                return picture.convert("RGB")
        except OSError as error:
            raise DataError(f"{self.image}: cannot read the image of question {self.question_id!r}: {error}") from None


class Task:
    """Base class of a benchmark format; subclasses set the class attributes and implement the methods."""

    name: str = ""
    #: the standard instruction appended to every question (``--instruction`` overrides it)
    instruction: str = "Answer the question using a single word or phrase."
    max_new_tokens: int = 16
    #: the metrics a table, a plot and retention use, as paths into :meth:`score`'s dict (``"mean.f1"``)
    headline: tuple[str, ...] = ("accuracy",)
    #: the files ``--data`` must hold, for errors and ``--help``
    layout: str = ""

    def load(self, data: Path | None, split: str | None = None) -> list[Question]:
        raise NotImplementedError

    def normalise(self, output: str, question: Question) -> str:
        raise NotImplementedError

    def question_score(self, prediction: str, question: Question) -> float:
        """This question's score in [0, 1] (accuracy-like), for the progress bar's running metric."""
        raise NotImplementedError

    def score(self, rows: Sequence[dict], questions: dict[Any, Question]) -> dict:
        """The official metrics of ``rows`` (``question_id``, ``prediction`` …): a JSON-ready dict."""
        return {"accuracy": 100.0 * sum(self.question_score(r["prediction"], questions[r["question_id"]])
                                        for r in rows) / max(len(rows), 1), "n": len(rows)}


# -- helpers for readers ------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def field_of(record: Any, name: str, path: Path, where: str, kind: type | tuple = object) -> Any:
    """``record[name]``, or a :class:`DataError` naming the file, the record and the field."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} should be a JSON object, got {type(record).__name__}")
    if name not in record:
        raise DataError(f"{path}: {where} has no field {name!r}")
    value = record[name]
    if kind is not object and not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{path}: {where}: field {name!r} should be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def find_file(data: Path, pattern: str, what: str, split: str | None = None, key: Callable[[Path], str] | None = None) -> Path:
    """The one file in ``data`` matching ``pattern``; with several, ``split`` picks by ``key(path)``."""
    if data is None or not data.is_dir():
        raise DataError(f"--data: {data} is not a folder (expected {what})")
    found = sorted(data.glob(pattern))
    if split is not None and key is not None:
        chosen = [p for p in found if key(p) == split]
        if not chosen:
            raise DataError(f"--split {split}: no {what} for that split in {data} (found: "
                            f"{', '.join(key(p) for p in found) or 'none'})")
        return chosen[0]
    if not found:
        raise DataError(f"{data}: no {what} ({pattern}) found")
    if len(found) > 1:
        splits = ", ".join(key(p) if key else p.name for p in found)
        raise DataError(f"{data}: several {what} found ({splits}); choose one with --split")
    return found[0]


def find_image(folders: Sequence[Path], name: str, path: Path, where: str) -> Path:
    """The first ``folder/name`` that exists; a :class:`DataError` naming where it was looked for."""
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(f) for f in folders)
    raise DataError(f"{path}: {where}: image {name!r} not found (looked in {looked})")
