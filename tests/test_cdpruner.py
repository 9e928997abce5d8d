"""CDPruner: the conditional-DPP greedy MAP against a slow determinant-based reference, its relevance read from
the model's own instruction embeddings, and the model-level properties."""
import math

import pytest
import torch

import vtr
from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, model_of, visual_tokens
from vtr.reducers.cdpruner import CDPruner, CDPrunerConfig
from vtr.signals import Signal
from vtr.testing import example_inputs


def reference_cdpruner(features, text, k, theta, negate=False):
    """In float64: relevance = mean cosine to the text, min–max normalised, q = exp(θ/(2(1-θ))·r);
    L = diag(q)·S·diag(q); greedily add the token maximising det(L_S) (computed with torch.linalg.det)."""
    x = torch.nn.functional.normalize(features.double(), dim=-1)
    t = torch.nn.functional.normalize(text.double(), dim=-1)
    r = (x @ t.T).mean(1) * (-1 if negate else 1)
    r = (r - r.min()) / (r.max() - r.min() + 1e-6)
    q = r if theta == 1 else torch.exp(theta / (2 * (1 - theta)) * r)
    kernel = q[:, None] * (x @ x.T) * q[None, :]
    chosen = []
    for _ in range(k):
        best, best_det = None, -math.inf
        for j in range(len(features)):
            if j in chosen:
                continue
            s = chosen + [j]
            det = float(torch.linalg.det(kernel[s][:, s]))
            if det > best_det:
                best, best_det = j, det
        chosen.append(best)
    return sorted(chosen)


@pytest.mark.parametrize("k, theta, negate", [(4, 0.5, False), (8, 0.5, False), (8, 0.8, True), (6, 1.0, False)])
def test_rule_matches_reference(k, theta, negate):
    g = torch.Generator().manual_seed(k)
    features = [torch.randn(30, 24, generator=g) for _ in range(2)]
    text = [torch.randn(5, 24, generator=g) for _ in range(2)]
    plans = CDPruner(CDPrunerConfig(keep=k, theta=theta, negate=negate)).plan(
        visual_tokens(features, {Signal.PROMPT_EMBEDDINGS: text}))
    for plan, f, t in zip(plans, features, text):
        assert plan.tolist() == reference_cdpruner(f, t, k, theta, negate)


def test_rank_exhausted_fills_by_quality():
    """More picks than feature dimensions: the kernel's rank runs out and the rest go by relevance."""
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(20, 3, generator=g), torch.randn(2, 3, generator=g)
    (plan,) = CDPruner(CDPrunerConfig(keep=10)).plan(visual_tokens([f], {Signal.PROMPT_EMBEDDINGS: [t]}))
    assert len(plan) == 10 and len(set(plan.tolist())) == 10


def test_relevance_reads_the_instruction_embeddings():
    """End to end on LLaVA: the plan equals the reference fed the unpatched model's projected features and
    the input embeddings of the text after the image (the instruction)."""
    model, processor = model_of("llava")
    inputs = example_inputs(processor, "llava", batch=2, seed=1)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    with vtr.patched(model, "cdpruner", keep=6):
        with torch.no_grad():
            model(**inputs)
        kept = [v.kept.tolist() for v in model.vtr.stats.views]
    image = model.config.image_token_id
    for b in range(2):
        ids, mask = inputs["input_ids"][b], inputs["attention_mask"][b].bool()
        last = int((ids == image).nonzero().max())
        text_ids = ids[last + 1:][mask[last + 1:]]
        with torch.no_grad():
            text = model.get_input_embeddings()(text_ids)
        assert kept[b] == reference_cdpruner(feats[b], text, 6, 0.5)


def test_validation():
    with pytest.raises(ValueError, match="theta"):
        CDPrunerConfig(theta=0.0)
    with pytest.raises(TypeError, match="negate"):
        CDPrunerConfig(negate=1)


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("qwen2_vl", "video")])
def test_keep_one_is_identity(family, kind):
    check_keep_one_is_identity("cdpruner", family, kind)


def test_batch_equals_single():
    check_batch_equals_single("cdpruner", "llava", keep=0.1)
