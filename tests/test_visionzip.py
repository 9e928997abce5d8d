"""VisionZip: the dominant/contextual rule against a slow loop reference, and the model-level properties."""
import pytest
import torch

from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, visual_tokens
from vtr.reducers.base import MergedView
from vtr.reducers.visionzip import VisionZip, VisionZipConfig, split_budget
from vtr.signals import Signal


def reference_visionzip(features, scores, k, contextual):
    """The rule written out: top dominant patches; evenly spaced targets among the rest; every other rest
    patch joins its most similar target (cosine); each target = mean of itself and its members."""
    n = len(scores)
    n_contextual = min(k - 1, int(k * contextual + 0.5))
    n_dominant = k - n_contextual
    dominant = sorted(torch.topk(scores, n_dominant).indices.tolist())
    rest = [i for i in range(n) if i not in dominant]
    step = max(1, len(rest) // n_contextual)
    targets = [rest[i] for i in range(0, len(rest), step)][:n_contextual]
    groups = {t: [t] for t in targets}
    for i in rest:
        if i in groups:
            continue
        sims = [torch.nn.functional.cosine_similarity(features[i], features[t], dim=0) for t in targets]
        groups[targets[max(range(len(targets)), key=lambda j: (sims[j], -j))]].append(i)
    out = {i: features[i] for i in dominant}
    out.update({t: torch.stack([features[m] for m in members]).mean(0) for t, members in groups.items()})
    index = sorted(out)
    return torch.tensor(index), torch.stack([out[i] for i in index])


@pytest.mark.parametrize("k, contextual", [(7, 10 / 64), (14, 10 / 64), (20, 0.5), (9, 0.3)])
def test_rule_matches_reference(k, contextual):
    g = torch.Generator().manual_seed(k)
    features = [torch.randn(48, 16, generator=g) for _ in range(3)]
    scores = [torch.rand(48, generator=g) for _ in range(3)]
    reducer = VisionZip(VisionZipConfig(keep=k, contextual=contextual))
    plans = reducer.plan(visual_tokens(features, {Signal.CLS_ATTENTION: scores}))
    for plan, f, s in zip(plans, features, scores):
        index, merged = reference_visionzip(f, s, k, contextual)
        assert isinstance(plan, MergedView)
        assert torch.equal(plan.index, index)
        torch.testing.assert_close(plan.features, merged)


def test_contextual_zero_is_dominant_only():
    g = torch.Generator().manual_seed(0)
    f, s = torch.randn(30, 8, generator=g), torch.rand(30, generator=g)
    (plan,) = VisionZip(VisionZipConfig(keep=5, contextual=0.0)).plan(visual_tokens([f], {Signal.CLS_ATTENTION: [s]}))
    assert torch.equal(plan, torch.topk(s, 5).indices.sort().values)


def test_split_and_validation():
    assert split_budget(64, 10 / 64) == (54, 10)  # the paper's 54 + 10 at 64 tokens
    assert split_budget(1, 0.5) == (1, 0)
    with pytest.raises(ValueError, match="contextual"):
        VisionZipConfig(contextual=1.0)


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("qwen2_vl", "image")])
def test_keep_one_is_identity(family, kind):
    check_keep_one_is_identity("visionzip", family, kind)


def test_batch_equals_single():
    check_batch_equals_single("visionzip", "llava", keep=0.1)
