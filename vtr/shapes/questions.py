"""Questions with single-word answers about a :class:`~vtr.shapes.scenes.Scene`.

Five types, each a template over the scene description:

* ``colour_of_shape`` — ``what color is the <shape> ?`` (asked only when that shape is unique) → a colour;
* ``shape_of_colour`` — ``which shape is <colour> ?`` (asked only when that colour is unique) → a shape;
* ``exists`` — ``is there a <colour> <shape> ?`` → yes / no; most negatives are *hard*: the colour and the
  shape both occur in the scene, but not together;
* ``count`` — ``how many <shape>s are there ?`` → 0, 1, 2 or 3;
* ``relpos`` — ``where is the <c1> <s1> relative to the <c2> <s2> ?`` → left / right / above / below, asked
  only for two objects that are each unique by colour and shape, when one axis clearly dominates
  (|Δ| ≥ 12 px and at least twice the other axis' |Δ|).
"""
from __future__ import annotations

import numpy as np

from vtr.shapes.scenes import COLOURS, SHAPES, Scene

QUESTION_TYPES = ("colour_of_shape", "shape_of_colour", "exists", "count", "relpos")
DIRECTIONS = ("left", "right", "above", "below")
COUNTS = ("0", "1", "2", "3")
RELPOS_MIN_PX, RELPOS_RATIO = 12.0, 2.0
HARD_NEGATIVE_SHARE = 0.7

#: every word the questions and answers use, for a word-level tokenizer
WORDS = ("USER", "ASSISTANT", ":", "?", "what", "color", "is", "the", "which", "shape", "there", "a", "how",
         "many", "are", "where", "relative", "to", "yes", "no", *SHAPES, *(s + "s" for s in SHAPES), *COLOURS,
         *COUNTS, *DIRECTIONS)


def ask_colour_of_shape(shape: str) -> str:
    return f"what color is the {shape} ?"


def ask_shape_of_colour(colour: str) -> str:
    return f"which shape is {colour} ?"


def ask_exists(colour: str, shape: str) -> str:
    return f"is there a {colour} {shape} ?"


def ask_count(shape: str) -> str:
    return f"how many {shape}s are there ?"


def ask_relpos(a, b) -> str:
    return f"where is the {a.colour} {a.shape} relative to the {b.colour} {b.shape} ?"


def direction(a, b) -> str | None:
    """Where ``a`` lies relative to ``b`` when one axis clearly dominates, else ``None``."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= RELPOS_MIN_PX and abs(dx) >= RELPOS_RATIO * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= RELPOS_MIN_PX and abs(dy) >= RELPOS_RATIO * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def candidates(scene: Scene, qtype: str) -> list[tuple[str, str]]:
    """Every valid ``(question, answer)`` of ``qtype`` for ``scene``; exists lists positives, then hard
    negatives, then other negatives (see :func:`exists_split`)."""
    objs = scene.objects
    if qtype == "colour_of_shape":
        return [(ask_colour_of_shape(s), next(o.colour for o in objs if o.shape == s))
                for s in SHAPES if sum(o.shape == s for o in objs) == 1]
    if qtype == "shape_of_colour":
        return [(ask_shape_of_colour(c), next(o.shape for o in objs if o.colour == c))
                for c in COLOURS if sum(o.colour == c for o in objs) == 1]
    if qtype == "exists":
        pos, hard, easy = exists_split(scene)
        return ([(ask_exists(c, s), "yes") for c, s in pos] + [(ask_exists(c, s), "no") for c, s in hard]
                + [(ask_exists(c, s), "no") for c, s in easy])
    if qtype == "count":
        return [(ask_count(s), str(sum(o.shape == s for o in objs))) for s in SHAPES]
    if qtype == "relpos":
        unique = [o for o in objs if sum((p.colour, p.shape) == (o.colour, o.shape) for p in objs) == 1]
        out = []
        for a in unique:
            for b in unique:
                if a is not b and (d := direction(a, b)) is not None:
                    out.append((ask_relpos(a, b), d))
        return out
    raise ValueError(f"qtype={qtype!r}; allowed: {', '.join(QUESTION_TYPES)}")


def exists_split(scene: Scene) -> tuple[list, list, list]:
    """``(present pairs, hard absent pairs, easy absent pairs)`` as ``(colour, shape)`` lists, in a fixed order."""
    present = {(o.colour, o.shape) for o in scene.objects}
    colours = {o.colour for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    pos = [p for p in pairs if p in present]
    hard = [p for p in pairs if p not in present and p[0] in colours and p[1] in shapes]
    easy = [p for p in pairs if p not in present and p not in hard]
    return pos, hard, easy


def pick_exists(scene: Scene, rng: np.random.Generator, want_yes: bool) -> tuple[str, str]:
    """One exists question with the wanted answer; a 'no' is a hard negative with probability 0.7 when one exists."""
    pos, hard, easy = exists_split(scene)
    if want_yes:
        c, s = pos[int(rng.integers(len(pos)))]
        return ask_exists(c, s), "yes"
    pool = hard if hard and (rng.random() < HARD_NEGATIVE_SHARE or not easy) else easy
    c, s = pool[int(rng.integers(len(pool)))]
    return ask_exists(c, s), "no"


def training_questions(scene: Scene, rng: np.random.Generator, max_relpos: int = 2) -> list[tuple[str, str, str]]:
    """All questions of one image for multi-turn training, as ``(type, question, answer)``.

    Every colour_of_shape, shape_of_colour and count question; exists: every positive plus as many
    negatives (hard ones first, each paired with the positives in the same sequence, which gives the
    contrast the conjunction needs); up to ``max_relpos`` relative-position questions.
    """
    out = [(t, q, a) for t in ("colour_of_shape", "shape_of_colour", "count") for q, a in candidates(scene, t)]
    pos, hard, easy = exists_split(scene)
    rng.shuffle(hard), rng.shuffle(easy)
    negatives = (hard + easy)[:max(len(pos), 2)]
    out += [("exists", ask_exists(c, s), "yes") for c, s in pos]
    out += [("exists", ask_exists(c, s), "no") for c, s in negatives]
    rel = candidates(scene, "relpos")
    for i in rng.permutation(len(rel))[:max_relpos]:
        out.append(("relpos", *rel[int(i)]))
    return out
