"""DivPrune: the greedy max–min diversity subset against a brute-force loop, and the model-level properties."""
import pytest
import torch

from reducer_properties import check_batch_equals_single, check_keep_one_is_identity, visual_tokens
from vtr.reducers.divprune import DivPrune
from vtr.config import ReducerConfig


def reference_divprune(features, k):
    """Greedy max–min with explicit loops: start from the token whose nearest neighbour is farthest,
    then add the token whose distance (1 - cosine) to its nearest chosen token is largest."""
    n = len(features)
    d = [[1 - float(torch.nn.functional.cosine_similarity(features[i], features[j], dim=0)) for j in range(n)]
         for i in range(n)]
    first = max(range(n), key=lambda i: (min(d[i][j] for j in range(n) if j != i), -i))
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(d[i][j] for j in chosen), -i)))
    return sorted(chosen)


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_rule_matches_reference(k):
    g = torch.Generator().manual_seed(k)
    features = [torch.randn(40, 10, generator=g) for _ in range(2)]
    plans = DivPrune(ReducerConfig(keep=k)).plan(visual_tokens(features))
    for plan, f in zip(plans, features):
        assert plan.tolist() == reference_divprune(f, k)


def test_picks_one_token_per_cluster():
    """Tight clusters: a k-subset of max–min diversity takes one token from each of k clusters."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(6)
    features = torch.cat([c + 0.01 * torch.randn(5, 6, generator=g) for c in centres])
    (plan,) = DivPrune(ReducerConfig(keep=6)).plan(visual_tokens([features]))
    assert sorted((plan // 5).tolist()) == list(range(6))


@pytest.mark.parametrize("family, kind", [("llava", "image"), ("llava_next", "image")])
def test_keep_one_is_identity(family, kind):
    check_keep_one_is_identity("divprune", family, kind)


def test_batch_equals_single():
    check_batch_equals_single("divprune", "llava", keep=0.1)
