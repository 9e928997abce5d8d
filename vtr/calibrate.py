"""Tuning an adaptive reducer's threshold so its mean kept share of visual tokens hits a budget."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
        scale: the tuned setting (now in ``model.vtr.config.scale``).
        target: the aimed mean share; ``mean`` / ``std``: the achieved mean and spread over the
            samples of each sample's share (visual tokens per decoder layer / visual tokens in).
        shares: per sample; ``reached``: ``|mean - target| <= tolerance``.
    """

    scale: float
    target: float
    mean: float
    std: float
    shares: list[float]
    reached: bool


def measure(model, samples: list[dict]) -> list[float]:
    """Per sample: mean over decoder layers of visual tokens processed / visual tokens in."""
    shares = []
    for sample in samples:
        with torch.no_grad():
            model(**sample)
        shares += model.vtr.stats.layer_share
    return shares


def calibrate(model, samples: Iterable[dict], target_keep: float | None = None, tolerance: float = 0.01,
              max_steps: int = 24) -> Calibration:
    """Tune ``model.vtr.config.scale`` (e.g. ATP-TF's top-p exponent) by bisection on its logarithm.

    ``atp``'s default ``budget="sample"`` meets ``keep`` on every row without tuning: then nothing is
    tuned (``target_keep``, when given, becomes ``keep``) and the result reports what the samples
    achieve. Calibration is for ``budget="mean"``, whose counts follow the top-p masses freely.

    Args:
        model: a model patched with a reducer whose config has ``scale``, where a larger scale keeps
            fewer tokens.
        samples: processor outputs (dicts of tensors) that represent the workload.
        target_keep: the mean share to hit; defaults to ``model.vtr.config.keep``.
    Returns a :class:`Calibration`; ``model.vtr.config.scale`` is left at the best value found and
    the result is also stored at ``model.vtr.calibration``.
    """
    from vtr.api import is_patched
    from vtr.config import check_keep

    if not is_patched(model) or not hasattr(model.vtr.config, "scale"):
        raise ValueError("calibrate needs a model patched with an adaptive reducer that has a 'scale' setting (e.g. 'atp')")
    samples = list(samples)
    if not samples:
        raise ValueError("calibrate needs at least one sample")
    keep = model.vtr.config.keep
    if target_keep is None and isinstance(keep, int):
        raise ValueError(f"calibrate aims at a share; keep={keep} is a count: pass target_keep (a ratio in (0, 1])")
    target = check_keep(keep if target_keep is None else target_keep, "target_keep", counts=False)
    if getattr(model.vtr.config, "budget", "mean") == "sample":
        # every row already meets keep by construction: report what the samples achieve, tune nothing
        if target_keep is not None and target_keep != keep:
            model.vtr.config.keep = target
        shares = measure(model, samples)
        mean = sum(shares) / len(shares)
        std = (sum((s - mean) ** 2 for s in shares) / len(shares)) ** 0.5
        result = Calibration(model.vtr.config.scale, target, mean, std, shares, abs(mean - target) <= tolerance)
        model.vtr.calibration = result
        return result
    low, high = math.log(1e-3), math.log(1e3)  # share decreases as log-scale grows
    best = None
    for _ in range(max_steps):
        middle = (low + high) / 2
        model.vtr.config.scale = math.exp(middle)
        shares = measure(model, samples)
        mean = sum(shares) / len(shares)
        if best is None or abs(mean - target) < abs(best[1] - target):
            best = (math.exp(middle), mean, shares)
        if abs(mean - target) <= tolerance:
            break
        if mean > target:
            low = middle
        else:
            high = middle
    scale, mean, shares = best
    model.vtr.config.scale = scale
    std = (sum((s - mean) ** 2 for s in shares) / len(shares)) ** 0.5
    result = Calibration(scale, target, mean, std, shares, abs(mean - target) <= tolerance)
    model.vtr.calibration = result
    return result
