"""Each benchmark's official answer processing and metric against answers worked out by hand."""
from __future__ import annotations

import pytest

from vtr.eval.metrics import (binary_metrics, leave_one_out_accuracy, mme_subtask, parse_choice, parse_yes_no_mme,
                              parse_yes_no_pope, textvqa_accuracy, vqav2_accuracy)
from vtr.eval.normalize import normalize_answer, process_answer, process_digit_article, process_punctuation
from vtr.eval.tasks import Question, get_task
from vtr.eval.tasks.gqa import normalise_short
from vtr.eval.tasks.scienceqa import format_question


# -- VQA normalisation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("yes, it is", "yes it is"),            # ", " touches a space: the comma is deleted
    ("black-and-white", "black and white"),  # no space next to '-': it becomes a space
    ("1,000 - 2", "1000  2"),               # a digit-comma-digit group: every mark is deleted
    ("end.", "end"),                        # a period not followed by a digit goes
    ("3.5", "3.5"),                         # ... one followed by a digit stays
    ("what?!", "what  "),
])
def test_punctuation_step(raw, expected):
    assert process_punctuation(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Two dogs", "2 dogs"), ("none", "0"), ("a man on the horse", "man on horse"), ("dont know", "don't know"),
    ("  Ten   an  ", "10"), ("somebody'd", "somebodyd"),  # the official table's own oddity
])
def test_digit_article_step(raw, expected):
    assert process_digit_article(raw) == expected


def test_answer_processing_of_model_outputs():
    assert process_answer("The dog's ball.") == "dog 's ball"
    assert process_answer("Two\n") == "2"
    assert process_answer("Yes, it is!") == "yes it is"
    assert normalize_answer("\tA Cat\n") == "cat"


# -- VQA accuracy -------------------------------------------------------------------------------------------

def test_leave_one_out_accuracy_by_hand():
    answers = ["2"] * 3 + ["3"] * 7
    # leaving one of the three "2"s out leaves 2 matches (2/3); leaving a "3" out leaves 3 (1): (3·2/3 + 7)/10
    assert leave_one_out_accuracy("2", answers) == pytest.approx(0.9)
    assert leave_one_out_accuracy("3", answers) == 1.0
    assert leave_one_out_accuracy("4", answers) == 0.0
    # one match: 0 when that answer is left out, 1/3 in the nine other subsets
    assert leave_one_out_accuracy("x", ["x"] + ["y"] * 9) == pytest.approx(0.3)


def test_vqav2_normalises_only_when_humans_disagree():
    # identical human answers are compared as written (the official condition) ...
    assert vqav2_accuracy("Two", ["2"] * 10) == 0.0
    # ... which is why the harness scores the processed prediction
    assert vqav2_accuracy(process_answer("Two"), ["2"] * 10) == 1.0
    # disagreeing answers: both sides normalised; "the dog." → "dog" matches four: every subset has >= 3
    assert vqav2_accuracy("the dog.", ["dog"] * 4 + ["cat"] * 6) == 1.0
    assert vqav2_accuracy("Dog", ["dog"] * 2 + ["a dog"] + ["cat"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)


def test_textvqa_processes_both_sides():
    answers = ["coca cola"] * 3 + ["coke"] * 7
    assert textvqa_accuracy("Coca-Cola", answers) == pytest.approx(0.9)
    assert textvqa_accuracy("COKE.", answers) == 1.0


# -- POPE ---------------------------------------------------------------------------------------------------

def test_pope_metrics_by_hand():
    predictions = ["yes", "yes", "no", "no", "yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    m = binary_metrics(predictions, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["precision"] == pytest.approx(200 / 3) and m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == pytest.approx(60.0)
    never = binary_metrics(["no", "no"], ["yes", "no"])
    assert never["precision"] == 0.0 and never["f1"] == 0.0 and never["accuracy"] == 50.0


@pytest.mark.parametrize("output, label", [
    ("No, there is not.", "no"), ("Yes. No.", "yes"), ("There is not a dog", "no"), ("", "yes"), ("no", "no"),
    ("Nope", "yes"),  # the official rule only looks for the words No / no / not
])
def test_pope_answer_parsing(output, label):
    assert parse_yes_no_pope(output) == label


def test_pope_task_scores_each_split_and_their_mean():
    task = get_task("pope")
    qs = {f"{s}/{i}": Question(f"{s}/{i}", "", None, label, {"split": s})
          for s, labels in (("random", ["yes", "no"]), ("popular", ["yes", "yes"])) for i, label in enumerate(labels)}
    preds = {"random/0": "yes", "random/1": "yes", "popular/0": "yes", "popular/1": "no"}
    m = task.score([{"question_id": k, "prediction": v} for k, v in preds.items()], qs)
    assert m["random"]["accuracy"] == 50.0 and m["random"]["f1"] == pytest.approx(100 * 2 / 3)
    assert m["popular"]["accuracy"] == 50.0 and m["popular"]["recall"] == 50.0 and m["popular"]["precision"] == 100.0
    assert m["mean"]["accuracy"] == 50.0 and m["mean"]["f1"] == pytest.approx((200 / 3 + 200 / 3) / 2)
    assert "adversarial" not in m


# -- MME ----------------------------------------------------------------------------------------------------

def test_mme_subtask_by_hand():
    # image a: both right; image b: one of two right → acc 3/4, acc+ 1/2
    m = mme_subtask([True, True, True, False], ["a", "a", "b", "b"])
    assert (m["acc"], m["acc_plus"], m["score"]) == (75.0, 50.0, 125.0)


@pytest.mark.parametrize("output, label", [
    ("Yes", "yes"), ("Yes, it is.", "yes"), ("no.", "no"), ("I think yes", "other"), ("nothing", "no"),
])
def test_mme_answer_parsing(output, label):
    assert parse_yes_no_mme(output) == label


def test_mme_totals_sum_perception_and_cognition_scores():
    task = get_task("mme")
    layout = [("existence", "x", ["yes", "no"], ["yes", "no"]),     # 100 + 100
              ("count", "c", ["yes", "no"], ["yes", "yes"]),        # 50 + 0
              ("code_reasoning", "k", ["no", "yes"], ["other", "yes"])]  # 50 + 0
    qs, rows = {}, []
    for subtask, image, labels, preds in layout:
        for i, (label, pred) in enumerate(zip(labels, preds)):
            qid = f"{subtask}/{image}/{i}"
            qs[qid] = Question(qid, "", None, label, {"subtask": subtask, "image": image})
            rows.append({"question_id": qid, "prediction": pred})
    m = task.score(rows, qs)
    assert m["subtasks"]["existence"]["score"] == 200.0 and m["subtasks"]["count"]["score"] == 50.0
    assert m["perception"] == 250.0 and m["cognition"] == 50.0


# -- ScienceQA, GQA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("output, letter", [
    ("B", "B"), ("B. dog", "B"), ("(C)", "C"), ("The answer is A.", "A"), ("dog", ""), ("E", ""), (" C) x", "C"),
])
def test_choice_parsing(output, letter):
    assert parse_choice(output, n_choices=3) == letter


def test_scienceqa_prompt_layout():
    assert format_question("Which is hot?", ["ice", "fire"], "Look.") == "Context: Look.\nWhich is hot?\nA. ice\nB. fire"
    assert format_question("Which is hot?", ["ice", "fire"]) == "Which is hot?\nA. ice\nB. fire"


def test_gqa_exact_match_normalisation():
    assert normalise_short(" Yes.\n") == "yes"
    task = get_task("gqa")
    q = Question("1", "", None, "left", {"structural": "query", "semantic": "rel"})
    m = task.score([{"question_id": "1", "prediction": normalise_short("Left.")}], {"1": q})
    assert m["accuracy"] == 100.0 and m["per_structural"] == {"query": 100.0}
