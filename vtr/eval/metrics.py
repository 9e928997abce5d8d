"""The benchmarks' official metrics, re-implemented from their published definitions (no model, no files).

Every accuracy is in percent (0–100), as the official tools and the papers report them; MME scores are
points (accuracy + accuracy+, each in percent, summed over subtasks).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Sequence

from vtr.eval.normalize import clean_whitespace, normalize_answer, process_answer


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction in [0, 1]: over the ``len(answers)`` subsets that leave one human
    answer out, the mean of ``min(1, matches in the subset / 3)``. ``answers`` are already normalised."""
    if not answers:
        return 0.0
    scores = []
    for i in range(len(answers)):
        matches = sum(a == prediction for j, a in enumerate(answers) if j != i)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQAv2 accuracy in [0, 1], as ``vqaEval.py`` computes it: whitespace cleaned, and the
    punctuation / digit-article steps applied to the prediction and the answers **only when the human
    answers disagree** (the official condition; identical answers are compared as written)."""
    prediction = clean_whitespace(prediction)
    answers = [clean_whitespace(a) for a in answers]
    if len(set(answers)) > 1:
        prediction = normalize_answer(prediction)
        answers = [normalize_answer(a) for a in answers]
    return leave_one_out_accuracy(prediction, answers)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's TextVQA accuracy in [0, 1] (the M4C / LLaVA evaluator): prediction and every answer go
    through :func:`~vtr.eval.normalize.process_answer`, then the leave-one-out VQA accuracy."""
    return leave_one_out_accuracy(process_answer(prediction), [process_answer(a) for a in answers])


def mean_percent(values: Iterable[float]) -> float | None:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else None


def binary_metrics(predictions: Sequence[str], labels: Sequence[str], positive: str = "yes") -> dict:
    """POPE's metrics of yes/no predictions against labels, positive class ``positive``, in percent:
    accuracy, precision, recall, F1 and the share of ``positive`` predictions (yes-ratio); also the counts.
    Precision (recall) is 0 when nothing was predicted (labelled) positive."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = sum(p == positive and y == positive for p, y in zip(predictions, labels))
    fp = sum(p == positive and y != positive for p, y in zip(predictions, labels))
    fn = sum(p != positive and y == positive for p, y in zip(predictions, labels))
    tn = len(labels) - tp - fp - fn
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / n if n else None, "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n if n else None,
            "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def mme_subtask(correct: Sequence[bool], images: Sequence[str]) -> dict:
    """One MME subtask: ``acc`` = share of questions right, ``acc_plus`` = share of images whose questions
    (two per image) are all right, ``score = acc + acc_plus`` (percent, max 200)."""
    by_image: dict[str, list[bool]] = defaultdict(list)
    for ok, image in zip(correct, images):
        by_image[image].append(bool(ok))
    acc = mean_percent(map(float, correct)) or 0.0
    acc_plus = mean_percent(float(all(v)) for v in by_image.values()) or 0.0
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "n": len(correct), "images": len(by_image)}


def parse_yes_no_mme(output: str) -> str:
    """MME's answer parsing (``calculation.py``): lower case; ``yes``/``no`` as is, else ``yes`` or ``no``
    found in the first four characters (``yes`` first), else ``other``."""
    text = output.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def parse_yes_no_pope(output: str) -> str:
    """POPE's answer parsing (LLaVA's ``eval_pope.py``): keep the first sentence, drop commas; ``no`` when
    one of its space-separated words is ``No``, ``not`` or ``no``, otherwise ``yes`` (empty output too)."""
    text = output
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


_ANSWER_IS = re.compile(r"answer is \(?([A-Z])\)?")


def parse_choice(output: str, n_choices: int) -> str:
    """The option letter in a multiple-choice answer, or ``""`` when there is none (scored as wrong).

    Accepted, in order: the bare letter (``"B"``), a letter followed by ``.``, ``)`` or ``:`` (``"B. dog"``),
    a bracketed letter (``"(B)"``), and ``"The answer is B"``, as in LLaVA's ScienceQA evaluation."""
    letters = [chr(ord("A") + i) for i in range(n_choices)]
    text = output.strip()
    if text in letters:
        return text
    if len(text) >= 2 and text[0] in letters and text[1] in ".):":
        return text[0]
    if len(text) >= 3 and text[0] == "(" and text[1] in letters and text[2] == ")":
        return text[1]
    found = _ANSWER_IS.search(text)
    if found and found.group(1) in letters:
        return found.group(1)
    return ""


def exact_match(prediction: str, answer: str) -> bool:
    return prediction == answer
