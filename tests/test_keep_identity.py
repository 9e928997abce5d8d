"""``keep=1.0``, and an int count at least the view's tokens, is the identity for every registered reducer
on every family (and input kind) it supports: the logits equal the unpatched model's, bitwise."""
import numpy as np
import pytest
import torch

import vtr
from vtr.registry import get_spec
from vtr.testing import example_inputs, tiny_model

CASES = [("llava", "image"), ("llava_next", "image"), ("qwen2_vl", "image"), ("qwen2_vl", "video"),
         ("video_llava", "image"), ("video_llava", "video")]
#: settings a reducer needs to run offline on a tiny model (QuoTA: a scorer and the question, no CoT pass)
NEEDS = {"quota": {"scorer": lambda frames, query: np.ones(len(frames)), "question": "what happens?"}}
#: where the int-count form is checked too (one case per kind of view: image, AnyRes views, frames)
COUNT_CASES = {("llava", "image"), ("llava_next", "image"), ("qwen2_vl", "video")}
#: reducers that take one modality only
VIDEO_ONLY = {"quota"}


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
    family, kind = request.param
    model, processor = tiny_model(family)
    inputs = example_inputs(processor, family, kind, batch=1, seed=1)
    with torch.no_grad():
        reference = model(**inputs).logits
    return family, kind, model, inputs, reference


def supported(reducer: str, family: str, kind: str) -> bool:
    families = get_spec(reducer).reducer_class.families
    return (families is None or family in families) and (kind == "video" or reducer not in VIDEO_ONLY)


@pytest.mark.parametrize("keep", [1.0, 10**6], ids=["ratio", "count"])
def test_every_reducer_is_the_identity_at_full_keep(case, keep):
    family, kind, model, inputs, reference = case
    if isinstance(keep, int) and (family, kind) not in COUNT_CASES:
        pytest.skip("the count form runs on one case per token layout (it takes the ratio's code path after rounding)")
    ran = []
    for reducer in vtr.list_reducers():
        if not supported(reducer, family, kind):
            continue
        with vtr.patched(model, reducer, keep=keep, **NEEDS.get(reducer, {})):
            with torch.no_grad():
                logits = model(**inputs).logits
            stats = model.vtr.stats
        assert logits.shape == reference.shape and torch.equal(logits, reference), (reducer, family, kind)
        assert stats.visual_tokens_out == stats.visual_tokens_in and stats.flops_ratio == 1.0, (reducer, stats.summary())
        ran.append(reducer)
    assert {"fastervlm", "fastv", "aim", "atp"} <= set(ran)
