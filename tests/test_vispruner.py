"""VisPruner: important + diverse selection against a slow list-based reference, and the model-level properties."""
import pytest
import torch

from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, visual_tokens
from vtr.reducers.vispruner import VisPruner, VisPrunerConfig
from vtr.signals import Signal


def reference_vispruner(features, scores, k, important, step=8):
    """Written with Python lists: top important by score; the rest (by decreasing score) lose, each round,
    the ``step`` members of the even-position half most similar to any odd-position member."""
    n_imp = int(k * important)
    ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep, rest = ranked[:n_imp], ranked[n_imp:] if k > n_imp else []
    cos = lambda i, j: float(torch.nn.functional.cosine_similarity(features[i], features[j], dim=0))
    while len(rest) > k - n_imp:
        r = min(step, len(rest) - (k - n_imp))
        a, b = rest[0::2], rest[1::2]
        best = [max(cos(i, j) for j in b) for i in a]
        order = sorted(range(len(a)), key=lambda x: (-best[x], x))
        rest = [a[x] for x in order[r:]] + b
    return sorted(keep + rest)


@pytest.mark.parametrize("k, important", [(7, 0.5), (14, 0.5), (10, 0.0), (12, 1.0), (5, 0.3)])
def test_rule_matches_reference(k, important):
    g = torch.Generator().manual_seed(k)
    features = [torch.randn(50, 12, generator=g) for _ in range(2)]
    scores = [torch.rand(50, generator=g) for _ in range(2)]
    plans = VisPruner(VisPrunerConfig(keep=k, important=important)).plan(
        visual_tokens(features, {Signal.CLS_ATTENTION: scores}))
    for plan, f, s in zip(plans, features, scores):
        assert plan.tolist() == reference_vispruner(f, s, k, important)


def test_validation():
    with pytest.raises(ValueError, match="important"):
        VisPrunerConfig(important=1.5)
    with pytest.raises(ValueError, match="step"):
        VisPrunerConfig(step=0)


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("video_llava", "video")])
def test_keep_one_is_identity(family, kind):
    check_keep_one_is_identity("vispruner", family, kind)


def test_batch_equals_single():
    check_batch_equals_single("vispruner", "llava", keep=0.1)
