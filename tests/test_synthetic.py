"""The procedural VQA data: deterministic, and every answer right by an independent rule.

The checker below does not use the generator's question code: it parses the question text with its own
regular expressions and recomputes the answer from the scene description (the list of objects), and it
checks the rendered pixels against that description.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from vtr.shapes import QUESTION_TYPES, candidates, make_scene, majority_baseline, patch_labels, render
from vtr.shapes import test_set as held_out_set  # aliased: pytest would collect a name test_*
from vtr.shapes import calibration_set, training_questions
from vtr.shapes.scenes import RGB

PALETTE = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 60, 230), "yellow": (235, 220, 30),
           "purple": (150, 40, 200), "cyan": (30, 210, 220)}
SIDE = {"small": 8, "medium": 12, "large": 16}


def centre(o):
    return o.x + SIDE[o.size] / 2, o.y + SIDE[o.size] / 2


def check(scene, question: str) -> str:
    """The answer to ``question`` about ``scene``, by direct rules over ``scene.objects``."""
    objs = scene.objects
    if m := re.fullmatch(r"what color is the (\w+) \?", question):
        hits = [o for o in objs if o.shape == m[1]]
        assert len(hits) == 1, "asked about a shape that is not unique"
        return hits[0].colour
    if m := re.fullmatch(r"which shape is (\w+) \?", question):
        hits = [o for o in objs if o.colour == m[1]]
        assert len(hits) == 1, "asked about a colour that is not unique"
        return hits[0].shape
    if m := re.fullmatch(r"is there a (\w+) (\w+) \?", question):
        return "yes" if any(o.colour == m[1] and o.shape == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"how many (\w+)s are there \?", question):
        return str(sum(o.shape == m[1] for o in objs))
    if m := re.fullmatch(r"where is the (\w+) (\w+) relative to the (\w+) (\w+) \?", question):
        a = [o for o in objs if (o.colour, o.shape) == (m[1], m[2])]
        b = [o for o in objs if (o.colour, o.shape) == (m[3], m[4])]
        assert len(a) == len(b) == 1, "relpos objects must be unique"
        (ax, ay), (bx, by) = centre(a[0]), centre(b[0])
        horizontal, vertical = ax - bx, ay - by
        if abs(horizontal) > abs(vertical):
            assert abs(horizontal) >= 12 and abs(horizontal) >= 2 * abs(vertical), "ambiguous direction"
            return "left" if horizontal < 0 else "right"
        assert abs(vertical) >= 12 and abs(vertical) >= 2 * abs(horizontal), "ambiguous direction"
        return "above" if vertical < 0 else "below"
    raise AssertionError(f"unknown question form {question!r}")


def check_render(scene, image: np.ndarray):
    """An interior pixel of every object has the object's colour (±15 jitter)."""
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    for o in scene.objects:
        s = SIDE[o.size]
        x, y = o.x + s // 2, (o.y + s // 2 if o.shape != "triangle" else o.y + (3 * s) // 4)
        assert np.abs(image[y, x].astype(int) - np.array(PALETTE[o.colour])).max() <= 15, (o, image[y, x])


def test_palette_is_the_generators():
    assert RGB == PALETTE


def test_scenes_and_test_set_are_deterministic():
    a = make_scene(np.random.default_rng(7), 7)
    b = make_scene(np.random.default_rng(7), 7)
    assert a == b and np.array_equal(render(a), render(b))
    items = held_out_set()
    fresh = held_out_set.__wrapped__()
    assert [(i.question, i.answer, i.scene) for i in items] == [(i.question, i.answer, i.scene) for i in fresh]
    assert np.array_equal(render(items[3].scene), render(fresh[3].scene))
    # fixed held-out content: a change to the generator shows up here
    assert items[0].question == "what color is the circle ?" and items[0].answer == "red"


def test_test_set_is_large_balanced_and_correct():
    items = held_out_set()
    assert len(items) >= 1000
    per_type = Counter(i.qtype for i in items)
    assert set(per_type) == set(QUESTION_TYPES) and len(set(per_type.values())) == 1
    assert Counter(i.answer for i in items if i.qtype == "exists") == {"yes": len(items) // 10, "no": len(items) // 10}
    assert len({i.scene.seed for i in items}) == len(items)  # one scene per question
    for item in items:
        assert check(item.scene, item.question) == item.answer
        assert len(item.answer.split()) == 1
    for item in items[:100]:
        check_render(item.scene, render(item.scene))


def test_calibration_set_is_fixed_correct_and_never_a_test_image():
    calib = calibration_set()
    assert [(i.question, i.scene) for i in calib] == [(i.question, i.scene) for i in calibration_set()]
    assert Counter(i.qtype for i in calib) == {t: len(calib) // len(QUESTION_TYPES) for t in QUESTION_TYPES}
    for item in calib:
        assert check(item.scene, item.question) == item.answer
    test_images = {render(i.scene).tobytes() for i in held_out_set()}
    assert not any(render(i.scene).tobytes() in test_images for i in calib)


def test_majority_baseline_per_type():
    items = held_out_set()
    base = majority_baseline(items)
    for qtype in QUESTION_TYPES:
        answers = Counter(i.answer for i in items if i.qtype == qtype)
        assert base[qtype]["accuracy"] == pytest.approx(max(answers.values()) / sum(answers.values()))
    assert 0.2 < base["overall"]["accuracy"] < 0.5


def test_training_questions_and_all_candidates_are_correct():
    rng = np.random.default_rng(123)
    hard = 0
    for _ in range(300):
        scene = make_scene(rng)
        assert 3 <= len(scene.objects) <= 6
        check_render(scene, render(scene))
        for qtype in QUESTION_TYPES:
            for question, answer in candidates(scene, qtype):
                assert check(scene, question) == answer
        for qtype, question, answer in training_questions(scene, rng):
            assert check(scene, question) == answer
            if qtype == "exists" and answer == "no":
                colour, shape = re.fullmatch(r"is there a (\w+) (\w+) \?", question).groups()
                hard += any(o.colour == colour for o in scene.objects) and any(o.shape == shape for o in scene.objects)
    assert hard > 300  # hard negatives (colour and shape present, not together) are common


def test_patch_labels_mark_every_object():
    rng = np.random.default_rng(5)
    for _ in range(50):
        scene = make_scene(rng)
        labels = patch_labels(scene)
        assert labels.shape == (144,)
        expected = {1 + ["circle", "square", "triangle"].index(o.shape) * 6 + list(PALETTE).index(o.colour)
                    for o in scene.objects}
        assert set(labels[labels > 0].tolist()) == expected
