"""Chain-of-thought query decoupling: the question → the physical objects worth looking for.

QuoTA runs its base model once, text only, with a three-step prompt (is finding physical entities
needed; which objects; the physical ones as a Python list) and three worked examples, and reads the
list from "Step 3". Frames are then scored on "does the image contain any of these objects" instead
of on the raw question. The prompt below is written for vtr (same three steps, our own examples).

The output is model text, so it is parsed defensively: only the first ``Step 3`` list literal, read
with :func:`ast.literal_eval` (never ``eval``), size-limited, strings only. Anything else, and a
"no" at Step 1, means "no objects": the frames are then scored against the plain question.
"""
from __future__ import annotations

import ast
import re

DECOUPLE_PROMPT = """Before watching a video, decide which physical objects to look for in it to answer a question.
Work in three steps.
Step 1: Does answering the question require finding physical entities in the video? Answer yes or no.
Step 2: List the objects, people or things the question mentions or implies.
Step 3: Keep only the physical entities from Step 2, written as a Python list of strings.

Question: What colour is the umbrella the woman is holding?
Step 1: yes
Step 2: umbrella, woman, colour
Step 3: ["umbrella", "woman"]

Question: How many times does the dog jump over the fence?
Step 1: yes
Step 2: dog, fence, jumps
Step 3: ["dog", "fence"]

Question: What is the overall mood of the video?
Step 1: no
Step 2: mood
Step 3: []

Question: {question}
Answer in the same format, Step 1 to Step 3."""

MAX_CHARS = 4000
MAX_OBJECTS = 16
MAX_OBJECT_CHARS = 64

_STEP1 = re.compile(r"Step\s*1\s*[:.]\s*(yes|no)\b", re.IGNORECASE)
_STEP3 = re.compile(r"Step\s*3\s*[:.]\s*(\[[^\[\]]{0,2000}\])", re.IGNORECASE)
_NEXT_EXAMPLE = re.compile(r"\n\s*Question\s*:", re.IGNORECASE)


def decouple_prompt(question: str) -> str:
    """The decoupling prompt for ``question`` (``str.replace``, so braces in the question are harmless)."""
    return DECOUPLE_PROMPT.replace("{question}", question)


def parse_objects(text: str) -> list[str]:
    """The objects of a decoupling answer; ``[]`` when there are none or the answer cannot be read.

    Only the answer to this question is read (text from a further "Question:" on is ignored).
    Objects are stripped, whitespace-collapsed, de-duplicated (case-insensitive), non-empty strings
    of at most 64 characters; at most 16 are kept.
    """
    if not isinstance(text, str):
        return []
    text = _NEXT_EXAMPLE.split(text[:MAX_CHARS], maxsplit=1)[0]
    step1 = _STEP1.search(text)
    if step1 and step1.group(1).lower() == "no":
        return []
    step3 = _STEP3.search(text)
    if step3 is None:
        return []
    try:
        value = ast.literal_eval(step3.group(1))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []
    if not isinstance(value, (list, tuple)):
        return []
    objects, seen = [], set()
    for item in value:
        if not isinstance(item, str):
            continue
        name = " ".join(item.split())
        if name and len(name) <= MAX_OBJECT_CHARS and name.lower() not in seen:
            seen.add(name.lower())
            objects.append(name)
    return objects[:MAX_OBJECTS]
