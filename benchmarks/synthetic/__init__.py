"""Procedural VQA on small shapes: scenes, questions with single-word answers, a fixed held-out test set.

>>> from benchmarks.synthetic import test_set, render_pil
>>> item = test_set()[0]; item.question, item.answer      # doctest: +SKIP
>>> render_pil(item.scene)                                 # the 96×96 image the question is about
"""
from benchmarks.synthetic.questions import QUESTION_TYPES, WORDS, candidates, training_questions
from benchmarks.synthetic.scenes import (COLOURS, GRID, IMAGE_SIZE, N_LABELS, PATCH, SHAPES, Obj, Scene, make_scene,
                                         patch_labels, render, render_pil, scene_attributes, scene_from_seed)
from benchmarks.synthetic.testset import (CALIBRATION_SEED, N_PER_TYPE, TEST_SEED, Item, calibration_set,
                                         majority_baseline, test_set)

__all__ = ["QUESTION_TYPES", "WORDS", "candidates", "training_questions", "COLOURS", "SHAPES", "GRID", "IMAGE_SIZE",
           "N_LABELS", "PATCH", "Obj", "Scene", "make_scene", "patch_labels", "render", "render_pil",
           "scene_attributes", "scene_from_seed", "N_PER_TYPE", "TEST_SEED", "CALIBRATION_SEED", "Item", "calibration_set",
           "majority_baseline", "test_set"]
