"""The README's reducer example runs as written and does what it says."""
import re
from pathlib import Path

import torch

import vtr
from vtr.registry import unregister_reducer
from vtr.testing import example_inputs

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(after_heading: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_register_reducer_example(llava):
    model, processor = llava
    try:
        exec(readme_block("### Adding a reducer"), {"model": model})
        assert "center" in vtr.list_reducers() and model.vtr.config.sharpness == 2.0
        model(**example_inputs(processor, "llava"))
        kept = model.vtr.stats.views[0].kept
        rows, cols = kept // 24, kept % 24
        assert len(kept) == 144 and rows.min() >= 5 and rows.max() <= 18 and cols.min() >= 5 and cols.max() <= 18
    finally:
        unregister_reducer("center")
