"""The files of one run (task × reducer × keep): predictions written line by line, shards, resume.

A run's folder holds ``predictions.jsonl`` (one JSON object per question, flushed after every batch, so
an interrupted run loses nothing it wrote) and ``run.json`` (the settings the predictions depend on; a
resumed run must match them). Under ``accelerate launch`` every process appends to its own
``predictions.rank<R>.jsonl``; :func:`merge` folds every file into ``predictions.jsonl`` in question order.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

PREDICTIONS = "predictions.jsonl"
SETTINGS = "run.json"


class RunError(ValueError):
    """The run folder conflicts with this run (exists without ``--resume``, other settings, corrupt line)."""


def prediction_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("predictions*.jsonl"))


def read_rows(path: Path) -> list[dict]:
    """The rows of one predictions file. A last line cut off mid-write (a killed run) is dropped; any
    other unreadable line is an error naming the file and the line."""
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # no newline after it: the write was interrupted
                continue
            raise RunError(f"{path}: line {n} is not valid JSON; fix or delete the file") from None
        if not isinstance(row, dict) or "question_id" not in row:
            raise RunError(f"{path}: line {n} has no field 'question_id'")
        rows.append(row)
    return rows


def done_rows(folder: Path) -> dict[Any, dict]:
    """Every question already answered in ``folder`` (all prediction files), by ``question_id``."""
    out: dict[Any, dict] = {}
    for path in prediction_files(folder):
        for row in read_rows(path):
            out.setdefault(row["question_id"], row)
    return out


def check(folder: Path, settings: dict, resume: bool) -> None:
    """Refuse a run folder this run must not write into, before anything is generated."""
    stored = folder / SETTINGS
    if not resume and (prediction_files(folder) or stored.exists()):
        raise RunError(f"--out: {folder} already holds a run; pass --resume to continue it, or choose another --out")
    if stored.exists():
        previous = json.loads(stored.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise RunError(f"--resume: {folder} was made with other settings ({detail}); use another --out")


def record(folder: Path, settings: dict) -> None:
    """Write the settings a resumed run must match (main process, after every process ran :func:`check`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


class Writer:
    """Appends rows to this process's predictions file, one flushed line per row."""

    def __init__(self, folder: Path, rank: int, world: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (PREDICTIONS if world == 1 else f"predictions.rank{rank}.jsonl")
        if self.path.exists():  # rewrite what is readable, so a cut-off last line does not glue onto the next
            rows = read_rows(self.path)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.file = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def merge(folder: Path, order: Sequence[Any]) -> list[dict]:
    """Fold every predictions file of ``folder`` into ``predictions.jsonl``, remove the shard files, and
    return the rows of ``order`` (all must be present). Rows of questions outside ``order`` (an earlier
    run without ``--limit``) are kept, after them."""
    rows = done_rows(folder)
    missing = [q for q in order if q not in rows]
    if missing:
        raise RunError(f"{folder}: {len(missing)} question(s) have no prediction (first: {missing[0]!r})")
    ordered = [rows[q] for q in order]
    wanted = set(order)
    extra = [r for q, r in rows.items() if q not in wanted]
    target = folder / PREDICTIONS
    tmp = folder / (PREDICTIONS + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in ordered + extra), encoding="utf-8")
    os.replace(tmp, target)
    for path in prediction_files(folder):
        if path != target:
            path.unlink()
    return ordered
