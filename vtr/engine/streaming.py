"""Streamers on a patched ``generate``: they see the caller's prompt, not the reduced one.

``GenerationMixin.generate`` hands its streamer the prompt it was given first (``streamer.put(input_ids)``),
then each new token. A patched ``generate`` passes the *reduced* prompt on, so without this wrapper a
``TextStreamer(skip_prompt=False)`` would print a prompt with fewer image placeholders than the caller wrote.
"""
from __future__ import annotations

import torch


class CallerPromptStreamer:
    """Wraps ``streamer`` so that its first ``put`` receives ``prompt`` (the caller's ``(B, N)`` ids, on CPU as
    ``generate`` puts them) in place of the reduced prompt; later calls and every other attribute pass through."""

    def __init__(self, streamer, prompt: torch.Tensor) -> None:
        self.streamer, self.prompt, self.prompt_sent = streamer, prompt, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_sent:
            self.prompt_sent = True
            value = self.prompt.cpu()
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()

    def __getattr__(self, name: str):
        return getattr(self.streamer, name)
