"""Benchmark prompts in each model's own chat format (reused by other harnesses, e.g. an lmms-eval plugin).

>>> build_prompt(processor, "What is on the table?", "Answer the question using a single word or phrase.")
'USER: <image>\\nWhat is on the table?\\nAnswer the question using a single word or phrase. ASSISTANT:'

The user turn is the image followed by the question and, on a new line, the task's instruction, rendered
with ``processor.apply_chat_template`` so LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and Video-LLaVA each get the
prompt their checkpoint was trained with. A processor without a chat template (the shipped shapes model,
tiny test models) gets LLaVA-1.5's conversation format.
"""
from __future__ import annotations


def question_with_instruction(text: str, instruction: str = "") -> str:
    """``text`` and, on a new line, ``instruction`` — unless the question already ends with it (MME's
    questions carry "Please answer yes or no." themselves)."""
    instruction = instruction.strip()
    if not instruction or text.rstrip().endswith(instruction):
        return text
    return f"{text}\n{instruction}"


def build_prompt(processor, text: str, instruction: str = "", media: str = "image") -> str:
    """The full prompt string for one question about one image (``media="video"`` for one video).

    Args:
        processor: the model's processor (its ``chat_template`` and ``image_token`` are used).
        text: the question (options included for multiple choice).
        instruction: the task's answer-format instruction, appended on its own line.
    """
    content = question_with_instruction(text, instruction)
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": media}, {"type": "text", "text": content}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    from vtr.testing import chat_prompt  # LLaVA-1.5's format, declared once

    return chat_prompt(content, getattr(processor, f"{media}_token", None) or f"<{media}>")
