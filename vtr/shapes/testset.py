"""The fixed held-out test set: ``N_PER_TYPE`` questions of each type, each on its own scene, from fixed seeds.

Scene seeds are ``(TEST_SEED, type index, item, attempt)``; training draws scenes from other seeds
(``benchmarks.train_tiny_llava`` uses ``(TRAIN_SEED, …)``), so test scenes are never trained on. A small
calibration set (``CALIBRATION_SEED``), disjoint from both, is what adaptive reducers are tuned on, so
that tuning never sees a test image.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vtr.shapes.questions import QUESTION_TYPES, candidates, pick_exists
from vtr.shapes.scenes import Scene, make_scene

TEST_SEED = 20261129
CALIBRATION_SEED = 20261130
N_PER_TYPE = 250


@dataclass(frozen=True)
class Item:
    """One test question: ``scene`` renders to the image, ``answer`` is a single word."""
    index: int
    qtype: str
    question: str
    answer: str
    scene: Scene


def _item(qtype: str, j: int, base_seed: int) -> tuple[str, str, Scene]:
    t = QUESTION_TYPES.index(qtype)
    for attempt in range(1000):
        seed = (base_seed, t, j, attempt)
        rng = np.random.default_rng(seed)
        scene = make_scene(rng, seed)
        if qtype == "exists":
            question, answer = pick_exists(scene, rng, want_yes=j % 2 == 0)
            return question, answer, scene
        pool = candidates(scene, qtype)
        if pool:
            question, answer = pool[int(rng.integers(len(pool)))]
            return question, answer, scene
    raise RuntimeError(f"no {qtype} question after 1000 scenes")  # pragma: no cover


@functools.lru_cache(maxsize=4)
def test_set(n_per_type: int = N_PER_TYPE) -> tuple[Item, ...]:
    """``5 · n_per_type`` items, interleaved by type (item ``i`` has type ``QUESTION_TYPES[i % 5]``), so any
    prefix ``[:n]`` is a type-balanced slice."""
    return _question_set(TEST_SEED, n_per_type)


def calibration_set(n_per_type: int = 8) -> tuple[Item, ...]:
    """Like :func:`test_set`, from ``CALIBRATION_SEED``: images for tuning a reducer, never tested on."""
    return _question_set(CALIBRATION_SEED, n_per_type)


def _question_set(base_seed: int, n_per_type: int) -> tuple[Item, ...]:
    items = []
    for j in range(n_per_type):
        for qtype in QUESTION_TYPES:
            question, answer, scene = _item(qtype, j, base_seed)
            items.append(Item(len(items), qtype, question, answer, scene))
    return tuple(items)


def majority_baseline(items) -> dict[str, dict]:
    """Per type (and ``overall``): the most frequent answer and the accuracy of always giving it."""
    out = {}
    for qtype in QUESTION_TYPES:
        answers = Counter(it.answer for it in items if it.qtype == qtype)
        if answers:
            word, n = answers.most_common(1)[0]
            out[qtype] = {"answer": word, "accuracy": n / sum(answers.values()), "n": sum(answers.values())}
    total = sum(v["n"] for v in out.values())
    out["overall"] = {"answer": None, "accuracy": sum(v["accuracy"] * v["n"] for v in out.values()) / total, "n": total}
    return out
