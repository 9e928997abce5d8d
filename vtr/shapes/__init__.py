"""Procedural VQA on small shapes: scenes, questions with single-word answers, a fixed held-out test set,
and the tiny LLaVA trained on it (:data:`CHECKPOINT`, shipped in the package: the demo's default model).

>>> from vtr.shapes import test_set, render_pil
>>> item = test_set()[0]; item.question, item.answer      # doctest: +SKIP
>>> render_pil(item.scene)                                 # the 96×96 image the question is about
"""
from pathlib import Path

from vtr.shapes.questions import QUESTION_TYPES, WORDS, candidates, training_questions
from vtr.shapes.scenes import (COLOURS, GRID, IMAGE_SIZE, N_LABELS, PATCH, SHAPES, Obj, Scene, make_scene,
                      patch_labels, render, render_pil, scene_attributes, scene_from_seed)
from vtr.shapes.testset import (CALIBRATION_SEED, N_PER_TYPE, TEST_SEED, Item, calibration_set,
                      majority_baseline, test_set)

#: the trained checkpoint folder (stock ``LlavaForConditionalGeneration`` + ``LlavaProcessor``)
CHECKPOINT = Path(__file__).resolve().parent / "tiny-llava-shapes"

__all__ = ["CHECKPOINT", "QUESTION_TYPES", "WORDS", "candidates", "training_questions", "COLOURS", "SHAPES", "GRID", "IMAGE_SIZE",
           "N_LABELS", "PATCH", "Obj", "Scene", "make_scene", "patch_labels", "render", "render_pil",
           "scene_attributes", "scene_from_seed", "N_PER_TYPE", "TEST_SEED", "CALIBRATION_SEED", "Item", "calibration_set",
           "majority_baseline", "test_set"]
