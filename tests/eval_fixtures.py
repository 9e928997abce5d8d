"""Tiny benchmark folders in each official layout, written by the tests (no downloads).

Images are procedural shapes scenes (the shipped model answers their questions) and scikit-image photos.
Every writer returns the ground truth it wrote, keyed by the ``question_id`` the harness reports, so a
test can score the predictions on its own.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from vtr.shapes import render_pil, test_set


def shapes_items(kind: str | None = None, n: int = 3, start: int = 0):
    """``n`` held-out shapes items (of question type ``kind`` if given)."""
    items = [it for it in test_set() if kind is None or it.qtype == kind]
    return items[start:start + n]


def photo(name: str = "astronaut") -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def vqa_answers(answer: str, variant: str, n_variant: int) -> list[str]:
    """Ten human answers: ``10 - n_variant`` × ``answer`` and ``n_variant`` × ``variant``."""
    return [answer] * (10 - n_variant) + [variant] * n_variant


def write_vqav2(root: Path, split: str = "val2014") -> dict:
    questions, annotations, truth = [], [], {}
    items = shapes_items(n=3)
    entries = [(it.question, render_pil(it.scene), vqa_answers(it.answer, "blue", 3)) for it in items]
    entries.append(("what is in the picture ?", photo("coffee"), vqa_answers("coffee", "cup", 4)))
    for i, (question, image, answers) in enumerate(entries):
        qid, image_id = 1000 + i, 42 + i
        save(image, root / split / f"COCO_{split}_{image_id:012d}.jpg")
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
                            "multiple_choice_answer": answers[0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                        for j, a in enumerate(answers)]})
        truth[qid] = answers
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
         "questions": questions}))
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(
        {"info": {}, "license": {}, "data_subtype": split, "annotations": annotations}))
    return truth


def write_textvqa(root: Path) -> dict:
    data, truth = [], {}
    items = shapes_items(n=2, start=5)
    entries = [(it.question, render_pil(it.scene), vqa_answers(it.answer, "green", 2)) for it in items]
    entries.append(("what does the sign say ?", photo("rocket"), vqa_answers("nasa", "usa", 5)))
    for i, (question, image, answers) in enumerate(entries):
        image_id = f"{i:016x}"
        save(image, root / "train_images" / f"{image_id}.jpg")
        data.append({"question": question, "image_id": image_id, "image_classes": [], "flickr_original_url": "",
                     "flickr_300k_url": "", "image_width": image.width, "image_height": image.height,
                     "answers": answers, "question_tokens": question.split(), "question_id": 34602 + i,
                     "set_name": "val"})
        truth[34602 + i] = answers
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}))
    return truth


def write_gqa(root: Path) -> dict:
    questions, truth = {}, {}
    items = shapes_items(n=3, start=10)
    entries = [(it.question, render_pil(it.scene), it.answer, "query") for it in items]
    entries.append(("is there a cat ?", photo("chelsea"), "yes", "verify"))
    for i, (question, image, answer, structural) in enumerate(entries):
        qid, image_id = f"20{i:06d}", f"n{161313 + i}"
        save(image, root / "images" / f"{image_id}.jpg")
        questions[qid] = {"semantic": [], "entailed": [], "equivalent": [qid], "question": question,
                          "imageId": image_id, "isBalanced": True, "groups": {"global": None, "local": ""},
                          "answer": answer, "semanticStr": "", "annotations": {}, "types":
                          {"detailed": "", "semantic": "attr", "structural": structural}, "fullAnswer": answer}
        truth[qid] = answer
    (root / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    return truth


def write_pope(root: Path, splits=("random", "adversarial")) -> dict:
    truth = {}
    for s, split in enumerate(splits):
        lines = []
        items = shapes_items("exists", n=2 + s, start=3 * s)
        entries = [(it.question, render_pil(it.scene), it.answer) for it in items]
        entries.append(("Is there a cat in the image?", photo("chelsea"), "yes"))
        for i, (question, image, label) in enumerate(entries):
            name = f"COCO_val2014_{310196 + 10 * s + i:012d}.jpg"
            save(image, root / "val2014" / name)
            lines.append(json.dumps({"question_id": i + 1, "image": name, "text": question, "label": label}))
            truth[f"{split}/{i + 1}"] = label
        (root / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    return truth


MME_LAYOUT = {"existence": "side", "artwork": "nested", "code_reasoning": "side"}  # files side by side / nested


def mme_entries():
    """``[(subtask, stem, image, [(question, Yes/No) x 2])]``: two questions per image, one Yes one No."""
    from vtr.shapes.questions import ask_exists, exists_split

    out = []
    for k, it in enumerate(shapes_items("exists", n=2)):
        present, hard, easy = exists_split(it.scene)
        # the shapes model knows only its own words, so these two go without MME's "Please answer yes or no."
        qa = [(ask_exists(*present[0]), "Yes"), (ask_exists(*(hard + easy)[0]), "No")]
        out.append(("existence", f"{k:04d}", render_pil(it.scene), qa))
    out.append(("artwork", "10002", photo("astronaut"), [("Is this photo a painting? Please answer yes or no.", "No"),
                                                         ("Is this a photo of a person? Please answer yes or no.", "Yes")]))
    out.append(("code_reasoning", "0020", photo("coffee"), [("Is the output 3? Please answer yes or no.", "Yes"),
                                                            ("Is the output 4? Please answer yes or no.", "No")]))
    return out


def write_mme(root: Path) -> dict:
    """The release layout; ids are ``<subtask>/<image file>/<line>``."""
    truth = {}
    for subtask, stem, image, qa in mme_entries():
        nested = MME_LAYOUT[subtask] == "nested"
        image_dir = root / subtask / ("images" if nested else "")
        text_dir = root / subtask / ("questions_answers_YN" if nested else "")
        suffix = ".jpg" if nested else ".png"
        save(image, image_dir / f"{stem}{suffix}")
        text_dir.mkdir(parents=True, exist_ok=True)
        (text_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qa))
        for n, (_, a) in enumerate(qa, start=1):
            truth[f"{subtask}/{stem}{suffix}/{n}"] = (a.lower(), subtask, f"{stem}{suffix}")
    return truth


def write_mme_tsv(root: Path) -> dict:
    """VLMEvalKit's single-file form; the second question of a pair refers to the first row's image."""
    root.mkdir(parents=True, exist_ok=True)
    rows, truth, index = [], {}, 0
    for subtask, stem, image, qa in mme_entries():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        first = index
        for n, (q, a) in enumerate(qa):
            cell = base64.b64encode(buffer.getvalue()).decode() if n == 0 else str(first)
            path = f"{subtask}/{stem}.png"
            rows.append("\t".join([str(index), cell, q, a, subtask, path]))
            truth[f"{subtask}/{path}/{index}"] = (a.lower(), subtask, path)
            index += 1
    (root / "MME.tsv").write_text("index\timage\tquestion\tanswer\tcategory\timage_path\n" + "\n".join(rows) + "\n")
    return truth


def write_scienceqa(root: Path) -> dict:
    problems, truth = {}, {}
    colours = shapes_items("colour_of_shape", n=3)
    for i, it in enumerate(colours):
        pid = str(100 + i)
        choices = ["blue", it.answer, "green"] if it.answer not in ("blue", "green") else [it.answer, "red", "yellow"]
        problems[pid] = {"question": it.question, "choices": choices, "answer": choices.index(it.answer),
                         "hint": "Look at the shapes." if i == 0 else "", "image": "image.png", "task": "closed choice",
                         "grade": "grade2", "subject": "natural science", "topic": "colour", "category": "",
                         "skill": "", "lecture": "", "solution": "", "split": "test"}
        save(render_pil(it.scene), root / "images" / "test" / pid / "image.png")
        truth[pid] = "ABC"[choices.index(it.answer)]
    problems["999"] = {"question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0, "hint": "",
                       "image": None, "subject": "natural science", "split": "test"}  # no image: not in IMG
    problems["200"] = {"question": "Which animal is shown?", "choices": ["dog", "cat"], "answer": 1, "hint": "",
                       "image": "image.png", "subject": "natural science", "split": "test"}
    save(photo("chelsea"), root / "images" / "test" / "200" / "image.png")
    truth["200"] = "B"
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": [], "val": [], "test": ["100", "999", "101", "102", "200"],
                                                      "minival": []}))
    return truth


WRITERS = {"vqav2": write_vqav2, "textvqa": write_textvqa, "gqa": write_gqa, "pope": write_pope, "mme": write_mme,
           "mme_tsv": write_mme_tsv, "scienceqa": write_scienceqa}
