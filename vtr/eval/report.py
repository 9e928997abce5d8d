"""What an evaluation writes besides the predictions: ``metrics.json`` per run, the task's summary table
(``summary.md`` + ``summary.json``) and ``plot.png`` (each headline metric against keep and against the
analytic FLOPs ratio).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence


def headline_value(metrics: dict, path: str) -> float | None:
    """``metrics`` at a dotted ``path`` (``"mean.f1"``), or ``None`` when absent."""
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def with_retention(summary: dict, headline: Sequence[str], unpruned: dict | None) -> dict:
    """``summary`` plus ``headline`` (the headline metrics) and ``retention`` (each / the unpruned run's)."""
    values = {h: headline_value(summary["metrics"], h) for h in headline}
    base = {h: headline_value(unpruned["metrics"], h) for h in headline} if unpruned else {}
    retention = {h: (v / base[h] if v is not None and base.get(h) else None) for h, v in values.items()}
    return {**summary, "headline": values, "retention": retention}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "vtr": getattr(__import__("vtr"), "__version__", None), "platform": platform.platform()}


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_summary(task: str, headline: Sequence[str], runs: Sequence[dict], skipped: dict) -> str:
    """A markdown table of every run (unpruned first) with its headline metrics and cost."""
    header = ["run", "keep", "n", *headline, *(f"retention {h}" for h in headline[:1]), "visual tokens (LLM input)",
              "visual tokens (layer mean)", "FLOPs ratio", "s / question"]
    lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in runs:
        cells = [r["run"], fmt(r["keep"]), str(r["n"]), *(fmt(r["headline"][h]) for h in headline),
                 *(fmt(r["retention"][h], 3) for h in headline[:1]), fmt(r["visual_tokens_mean"], 1),
                 fmt(r["visual_tokens_layer_mean"], 1), fmt(r["flops_ratio"], 3), fmt(r["seconds_per_question"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Not run on this model:", ""] + [f"- `{name}`: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def plot(path: Path, task: str, headline: Sequence[str], runs: Sequence[dict]) -> Path | None:
    """Each headline metric against keep (left) and against the FLOPs ratio (right), one line per reducer,
    the unpruned run as a dashed line. ``None`` when there is nothing to plot (no metric values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [h for h in headline if any(r["headline"].get(h) is not None for r in runs)]
    if not metrics:
        return None
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.6 * len(metrics)), squeeze=False)
    unpruned = next((r for r in runs if r["reducer"] is None), None)
    reducers = list(dict.fromkeys(r["reducer"] for r in runs if r["reducer"] is not None))
    markers = "osD^v<>ph*"
    for row, metric in zip(axes, metrics):
        for i, reducer in enumerate(reducers):
            mine = sorted((r for r in runs if r["reducer"] == reducer and r["headline"].get(metric) is not None),
                          key=lambda r: r["keep"])
            if not mine:
                continue
            style = dict(marker=markers[i % len(markers)], color=plt.cm.tab20(i % 20), label=reducer)
            row[0].plot([r["keep"] for r in mine], [r["headline"][metric] for r in mine], "-", **style)
            row[1].plot([r["flops_ratio"] for r in mine], [r["headline"][metric] for r in mine], "-", **style)
        if unpruned is not None and unpruned["headline"].get(metric) is not None:
            for ax in row:
                ax.axhline(unpruned["headline"][metric], color="grey", linestyle="--", label="unpruned")
        row[0].set_xscale("log")
        row[0].set_xlabel("keep")
        row[1].set_xlabel("analytic prefill FLOPs ratio")
        for ax in row:
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{task}: metric vs keep and vs FLOPs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
