"""Accuracy retained under visual-token reduction, on the project's trained tiny LLaVA (144 visual tokens).

``python -m benchmarks.accuracy [--limit N] [--batch 125] [--model vtr/shapes/tiny-llava-shapes]``

Every registered reducer (``vtr.list_reducers()``; a reducer that lands later joins by registration alone)
is patched onto ``vtr/shapes/tiny-llava-shapes`` — a stock ``LlavaForConditionalGeneration`` trained by
``benchmarks/train_tiny_llava.py`` (see its ``MODEL_CARD.md``) — at keep 1.0, 0.5, 0.25, 0.1 and 0.05, and
answers the held-out questions of ``vtr/shapes`` (1,250 by default, balanced over five question
types). Recorded per run: accuracy overall and per type, retention (accuracy / unpruned accuracy), and the
visual tokens the LLM's input kept (tokens entering decoder layer 0) and the mean share of visual tokens the
decoder layers processed (``model.vtr.stats.layer_share``, the cost that in-LLM reducers cut further).

The model has **144 visual tokens** (96 px, patch 8), not LLaVA-1.5's 576: keep 0.1 is 14 tokens.
Keep means different things to different reducers: for pre-LLM reducers it is the share of patches
the LLM sees; ``fastv`` keeps that share from decoder layer 2 on (layers 0–1 see all 144); ``aim`` (merge, then
prune) and ``atp`` take ``keep`` as their total budget, the mean layer share; adaptive reducers (a ``scale`` setting, e.g.
``atp``) are tuned with :func:`vtr.calibrate` to each ``keep`` on 40 calibration images that are never tested
(``vtr.shapes.calibration_set``) where their config asks for it (``budget="mean"``); ``aim`` and ``atp`` by default
spend ``keep`` as their mean layer share without any tuning, adapting per image. Reducers that cannot run on this model (e.g. AnyRes-only or video-only ones) are listed with the
error they raise.

Answers are the argmax of the last-position logits of one patched, batched, left-padded
``model(**inputs, logits_to_keep=1)`` — the first token greedy ``generate`` would produce.
Writes the ``accuracy`` section of ``BENCHMARKS.md``, ``benchmarks/results/accuracy.json``,
``benchmarks/results/accuracy.png`` and (full test set only) the ``pruning`` section of the model's ``MODEL_CARD.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vtr
from benchmarks.report import machine_info, markdown_table, replace_section, write_json
from vtr.shapes import CHECKPOINT as MODEL
from vtr.shapes import QUESTION_TYPES, calibration_set, majority_baseline, render_pil
from vtr.shapes import test_set as held_out_set

SECTION = "accuracy"
KEEPS = (1.0, 0.5, 0.25, 0.1, 0.05)
RESULTS = Path(__file__).resolve().parent / "results"


def load(path=MODEL):
    """``(model, processor)`` from ``path`` with ``from_pretrained``, eval mode, left padding."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


def make_batches(processor, items, batch: int) -> list[tuple[list, dict]]:
    """Processor outputs for ``items`` in chunks of ``batch`` (left-padded), built once and reused by every run."""
    from vtr.testing import chat_prompt

    out = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        inputs = processor(images=[render_pil(it.scene) for it in chunk], text=[chat_prompt(it.question) for it in chunk],
                           return_tensors="pt", padding=True)
        out.append((chunk, inputs))
    return out


@torch.no_grad()
def answer_batches(model, processor, batches, progress=None) -> dict:
    """Greedy one-token answers for every batch: per-item correctness, the visual tokens the LLM's input
    kept (entering decoder layer 0) and the share of visual tokens the decoder layers processed."""
    correct, kept, layer_share = [], [], []
    for chunk, inputs in batches:
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        pred = processor.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
        correct += [p == it.answer for p, it in zip(pred, chunk)]
        if vtr.is_patched(model):
            stats = model.vtr.stats
            kept += [layers[0] for layers in stats.visual_tokens_per_layer]
            layer_share += list(stats.layer_share)
        else:
            n = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
            kept += [n] * len(chunk)
            layer_share += [1.0] * len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    return {"correct": correct, "kept": kept, "layer_share": layer_share}


def summarise(items, run: dict) -> dict:
    correct = np.asarray(run["correct"], dtype=float)
    out = {"accuracy": float(correct.mean()), "per_type": {}, "visual_tokens_kept": float(np.mean(run["kept"])),
           "layer_share": float(np.mean(run["layer_share"])), "n": len(items),
           # per question, in test-set order: lets two rows be compared question by question (paired)
           "correct": "".join("1" if c else "0" for c in run["correct"])}
    for t in QUESTION_TYPES:
        mask = np.array([it.qtype == t for it in items])
        if mask.any():
            out["per_type"][t] = float(correct[mask].mean())
    return out


def score(model, processor, items, reducer: str | None = None, keep: float = 1.0, batch: int = 50, **kw) -> dict:
    """Accuracy summary of ``items`` unpatched (``reducer=None``) or under ``vtr.patched(model, reducer, keep=keep)``."""
    batches = make_batches(processor, items, batch)
    if reducer is None:
        return summarise(items, answer_batches(model, processor, batches))
    with vtr.patched(model, reducer, keep=keep, **kw):
        return summarise(items, answer_batches(model, processor, batches))


#: the fixed slices ``tests/test_accuracy.py`` checks; ``--record`` stores their scores in ``<model>/eval.json``
SLICES = {"unpruned": (None, 1.0, 100), "fastervlm@0.1": ("fastervlm", 0.1, 250), "random@0.1": ("random", 0.1, 250)}
SLICE_BATCH = 50


def slice_scores(model, processor) -> dict:
    """Accuracy on the fixed test slices (first N held-out questions, batch 50), as recorded next to the model."""
    items = held_out_set()
    return {name: {"n": n, "accuracy": score(model, processor, items[:n], reducer, keep, SLICE_BATCH)["accuracy"]}
            for name, (reducer, keep, n) in SLICES.items()}


def calibrate_to_keep(model, samples: list[dict]) -> dict | None:
    """Tune an adaptive reducer (config with ``scale``) so its mean layer share on ``samples`` is its ``keep``.

    Returns the calibration (scale, achieved share) or ``None`` for reducers without a ``scale``."""
    if not hasattr(model.vtr.config, "scale") or getattr(model.vtr.config, "budget", "mean") != "mean":
        return None  # nothing to tune: e.g. atp's default budget="sample" meets keep on every image
    result = vtr.calibrate(model, samples)
    return {"scale": result.scale, "target": result.target, "achieved": result.mean, "reached": result.reached}


def run_all(model, processor, items, batch: int, reducers=None, keeps=KEEPS) -> dict:
    from tqdm import tqdm

    reducers = list(reducers or vtr.list_reducers())
    batches = make_batches(processor, items, batch)
    calibration = [inputs for _, inputs in make_batches(processor, calibration_set(), 20)]
    results: dict = {"unpruned": None, "reducers": {}, "skipped": {}}
    total = len(items) * (1 + len(reducers) * len(keeps))
    with tqdm(total=total, desc="accuracy", unit="q", file=sys.stderr) as bar:
        bar.set_postfix_str("unpruned")
        results["unpruned"] = summarise(items, answer_batches(model, processor, batches, bar))
        for name in reducers:
            rows = {}
            for keep in keeps:
                bar.set_postfix_str(f"{name} keep={keep}")
                try:
                    with vtr.patched(model, name, keep=keep):
                        tuned = calibrate_to_keep(model, calibration)
                        run = answer_batches(model, processor, batches, bar)
                except Exception as exc:  # a reducer that cannot run on LLaVA-1.5 (AnyRes-, video-only ...)
                    results["skipped"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    bar.update(len(items) * (len(keeps) - len(rows)))
                    break
                rows[str(keep)] = summarise(items, run)
                if tuned is not None:
                    rows[str(keep)]["calibration"] = tuned
                rows[str(keep)]["retention"] = rows[str(keep)]["accuracy"] / max(results["unpruned"]["accuracy"], 1e-9)
            if name not in results["skipped"]:
                results["reducers"][name] = rows
    return results


#: FasterVLM on LLaVA-1.5-7B, mean relative performance over 10 benchmarks at 75 / 90 / 95 % reduction
#: (paper Table 1; shared/notes/reducers.md §1): the published anchor this table is read against
FASTERVLM_PUBLISHED = {"0.25": 0.9875, "0.1": 0.9424, "0.05": 0.8941}


def own_method_claim(results: dict, name: str = "divrelay", keeps=("0.05", "0.1")) -> list[str]:
    """Whether vtr's own reducer beats every other reducer of the table at the low budgets, at no higher cost
    (layer share) than the best of them, computed from the rows."""
    ours = results["reducers"].get(name)
    if not ours:
        return []
    parts, holds = [], True
    n = results["unpruned"]["n"]
    noise = 2 * (2 * 0.8 * 0.2 / n) ** 0.5  # two standard errors of a difference of two accuracies near 0.8
    for keep in keeps:
        if keep not in ours:
            continue
        others = {n: rows[keep] for n, rows in results["reducers"].items() if n != name and keep in rows}
        best = max(others, key=lambda n: others[n]["accuracy"])
        mine, theirs = ours[keep], others[best]
        ok = mine["accuracy"] > theirs["accuracy"] and mine["layer_share"] <= theirs["layer_share"]
        holds = holds and ok
        margin = mine["accuracy"] - theirs["accuracy"]
        limit, how = noise, "unpaired"
        if mine.get("correct") and len(mine["correct"]) == len(theirs.get("correct", "")):
            # same questions: the standard error of the mean per-question difference (McNemar's setting)
            d = np.array([int(a) - int(b) for a, b in zip(mine["correct"], theirs["correct"])], dtype=float)
            limit, how = 2 * d.std(ddof=1) / len(d) ** 0.5, "paired"
        parts.append(f"keep {keep}: `{name}` {mine['accuracy']:.3f} at layer share {mine['layer_share']:.2f}, best other "
                     f"`{best}` {theirs['accuracy']:.3f} at {theirs['layer_share']:.2f} ({margin:+.3f}; two {how} "
                     f"standard errors {limit:.3f}: {'beyond' if abs(margin) > limit else 'within'} noise)")
    verdict = "holds" if holds else "does **not** hold"
    return ["", f"vtr's own `{name}` against the best other reducer of this table: {'; '.join(parts)}. The claim "
            f"(more accurate than every other reducer, at a layer share no higher than the best one's) {verdict} here; "
            f"with {n} questions, unpaired accuracy differences below about {noise:.3f} (two standard errors) are within noise; "
            "rows measured on the same questions are also compared question by question (paired)."]


def markdown(results: dict, majority: dict, info: dict, png: str = "accuracy.png", title: str = "") -> str:
    un = results["unpruned"]
    lines = [
        title or "## Accuracy retained (tiny LLaVA trained here, 144 visual tokens)",
        "",
        f"`python -m benchmarks.accuracy` on `vtr/shapes/tiny-llava-shapes` (a stock `LlavaForConditionalGeneration`, "
        f"see its `MODEL_CARD.md`; **144 visual tokens** — 96 px, patch 8 — not LLaVA-1.5's 576), "
        f"{un['n']} held-out questions of `vtr/shapes` ({', '.join(QUESTION_TYPES)}, balanced). "
        f"Unpruned accuracy **{un['accuracy']:.3f}**; majority-answer baseline {majority['overall']['accuracy']:.3f}. "
        "Retention = accuracy / unpruned accuracy. *LLM input* = mean visual tokens entering decoder layer 0; "
        "*layers* = mean share of the 144 visual tokens the decoder layers processed, the cost (differs from "
        "input/144 only for in-LLM reducers: `fastv` keeps `keep` from layer 2 on; `aim` (merge, then prune inside "
        "the LLM) and `atp` (adaptive per image and layer) spend `keep` as their mean layer share, uncalibrated).",
        "",
        f"Measured {info.get('date', '')} on {info.get('cpu', '?')}, {info.get('torch_threads', '?')} threads, "
        f"torch {info.get('torch')}, transformers {info.get('transformers')}.",
        "",
    ]
    merged = results.get("merged")
    if merged:  # --merge: some rows come from an earlier run on the same model and questions
        lines[-1:-1] = [f"Rows of {', '.join(f'`{n}`' for n in merged['measured'])} measured then; the other rows come "
                        f"from the run of {merged['earlier'].get('date', '?')} on the same model and questions (merged "
                        f"with `--merge`; its unpruned accuracy, {merged['earlier_unpruned']:.3f}, was re-measured equal)."
                        + (f" Left out of the earlier run: {', '.join(f'`{n}`' for n in merged['dropped'])} (their "
                           "settings changed meaning since)." if merged.get("dropped") else ""),
                        ""]
    header = ["reducer", "keep", "LLM input", "layers", "accuracy", "retention", *QUESTION_TYPES]
    rows = [["(unpruned)", "1.0", f"{un['visual_tokens_kept']:.1f}", "1.00", f"**{un['accuracy']:.3f}**", "1.000",
             *(f"{un['per_type'].get(t, float('nan')):.3f}" for t in QUESTION_TYPES)],
            ["(majority answer)", "–", "–", "–", f"{majority['overall']['accuracy']:.3f}", "–",
             *(f"{majority[t]['accuracy']:.3f}" for t in QUESTION_TYPES)]]
    for name, by_keep in results["reducers"].items():
        for keep, r in by_keep.items():
            rows.append([name, keep, f"{r['visual_tokens_kept']:.1f}", f"{r['layer_share']:.2f}", f"{r['accuracy']:.3f}",
                         f"{r['retention']:.3f}", *(f"{r['per_type'].get(t, float('nan')):.3f}" for t in QUESTION_TYPES)])
    lines.append(markdown_table(header, rows))
    ours = results["reducers"].get("fastervlm", {})
    if all(k in ours for k in FASTERVLM_PUBLISHED):
        pairs = "; ".join(f"keep {k}: {ours[k]['retention']:.1%} here vs {v:.2%} published"
                          for k, v in FASTERVLM_PUBLISHED.items())
        at = ours["0.1"]["per_type"]
        worst = sorted(at, key=lambda t: at[t] - un["per_type"][t])[:2]
        losses = ", ".join(f"{t} {un['per_type'][t]:.3f} → {at[t]:.3f}" for t in worst)
        lines += ["", f"FasterVLM retention against the paper's LLaVA-1.5-7B figures (mean over 10 benchmarks, "
                  f"576 tokens): {pairs}. At keep 0.1 the largest losses here are {losses}. The tiny model "
                  "never saw a short image sequence in training, so part of the loss is likely that shift rather "
                  "than the selection (an oracle keeping the object patches first lost about as much in "
                  "`shared/notes/training.md` §4)."]
    calibrated = {name: by_keep for name, by_keep in results["reducers"].items()
                  if any("calibration" in r for r in by_keep.values())}
    notes = ["", "Reading the table: for `aim` and `atp` `keep` is the *layers* column (their total budget; keep 1.0 "
             "is the unpruned model), so compare them with the others at equal *layers*. On this 4-layer "
             "tower `vtc_cls`'s layer range (2/3 of the depth to -2) is the feature layer alone, so it selects "
             "exactly what `fastervlm` selects. The plot's right panel places every row at what it spent (*layers*): "
             "an in-LLM reducer's low-keep rows move right there, since its first layers still process every token."]
    for name, by_keep in calibrated.items():
        achieved = ", ".join(f"{k} → {r['calibration']['achieved']:.3f}" for k, r in by_keep.items())
        floor = [k for k, r in by_keep.items() if not r["calibration"]["reached"]]
        notes[-1] += (f" `{name}` has no fixed keep: before each row it is tuned with `vtr.calibrate` on 40 "
                      f"calibration images (never tested) so its mean layer share hits `keep` (achieved there: "
                      f"{achieved}); the *layers* column is what it then spent on the test images.")
        if floor:
            notes[-1] += (f" At keep {', '.join(floor)} the target is below what `{name}` can reach on this "
                          "4-layer LLM (its first layer sees every token and it always keeps a spatial sample), so those "
                          "rows sit at its floor.")
    lines += notes
    lines += own_method_claim(results)
    if un["accuracy"] < 0.8:
        lines += ["", f"**Caveat:** the model reaches {un['accuracy']:.3f} unpruned, below the 0.80 the project set for "
                  "this benchmark (see `vtr/shapes/tiny-llava-shapes/MODEL_CARD.md`: under-trained vision tower), so "
                  "differences of a few points between reducers are within noise (n per type = "
                  f"{un['n'] // len(QUESTION_TYPES)}); the large gaps (e.g. [CLS]-based selection vs random or pooling "
                  "at keep 0.1) are not."]
    if results["skipped"]:
        lines += ["", "Not run on this model (the error each raises on LLaVA-1.5):", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in results["skipped"].items()]
    lines += ["", f"![accuracy vs keep](benchmarks/results/{png})"]
    return "\n".join(lines)


def card_markdown(results: dict) -> str:
    """The model card's summary: overall accuracy of every reducer at every keep (from the same run)."""
    un = results["unpruned"]
    keeps = list(next(iter(results["reducers"].values())).keys()) if results["reducers"] else []
    header = ["reducer", *(f"keep {k} ({round(float(k) * un['visual_tokens_kept'])})" for k in keeps)]
    rows = [["unpruned (144)", *(f"{un['accuracy']:.3f}" for _ in keeps)]]
    rows += [[name, *(f"{by_keep[k]['accuracy']:.3f}" for k in keeps)] for name, by_keep in results["reducers"].items()]
    return "\n".join([
        f"## Pruning on this model (all {un['n']} test questions, `python -m benchmarks.accuracy`)",
        "",
        markdown_table(header, rows),
        "",
        "Tokens in brackets: visual tokens a pre-LLM reducer passes to the LLM. Per question type, tokens kept "
        "and the in-LLM reducers' layer shares: the `accuracy` section of `BENCHMARKS.md`.",
    ])


def plot(results: dict, majority: dict, path: Path) -> Path:
    """Two panels, one curve per reducer: accuracy against ``keep`` (what was asked) and against the mean
    share of visual tokens the decoder layers processed (what was spent; differs for in-LLM reducers).
    A curve identical to an earlier one (e.g. ``vtc_cls`` = ``fastervlm`` on a 4-layer tower) is labelled so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_keep_ax, by_cost_ax) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    markers, styles = "osD^vPX*<>", ("-", "--", "-.", ":")
    seen: dict[tuple, str] = {}
    for i, (name, by_keep) in enumerate(results["reducers"].items()):
        accuracy = [by_keep[k]["accuracy"] for k in by_keep]
        label = name + (f" (= {seen[tuple(accuracy)]})" if tuple(accuracy) in seen else "")
        seen.setdefault(tuple(accuracy), name)
        style = dict(marker=markers[i % len(markers)], linestyle=styles[i % len(styles)], markersize=7 - i % 3)
        by_keep_ax.plot([float(k) for k in by_keep], accuracy, label=label, **style)
        by_cost_ax.plot([by_keep[k]["layer_share"] for k in by_keep], accuracy, label=label, **style)
    for ax in (by_keep_ax, by_cost_ax):
        ax.axhline(results["unpruned"]["accuracy"], color="black", linestyle="--", linewidth=1, label="unpruned")
        ax.axhline(majority["overall"]["accuracy"], color="grey", linestyle=":", linewidth=1, label="majority answer")
        ax.set_xscale("log")
        ax.set_xticks(list(KEEPS), [str(k) for k in KEEPS])
        ax.grid(alpha=0.3)
    by_keep_ax.set_xlabel("keep (share of the 144 visual tokens asked for)")
    by_cost_ax.set_xlabel("mean share of visual tokens the decoder layers processed (cost)")
    by_keep_ax.set_ylabel("accuracy")
    by_keep_ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"tiny-llava-shapes (144 visual tokens), {results['unpruned']['n']} held-out questions")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge_results(earlier: dict, new: dict) -> dict:
    """``new``'s reducers over ``earlier``'s (sorted by name); refused unless both unpruned runs agree exactly."""
    if earlier["unpruned"]["n"] != new["unpruned"]["n"] or earlier["unpruned"]["accuracy"] != new["unpruned"]["accuracy"]:
        raise SystemExit(f"--merge: the earlier run's unpruned accuracy {earlier['unpruned']['accuracy']} on "
                         f"{earlier['unpruned']['n']} questions differs from this run's {new['unpruned']['accuracy']} on "
                         f"{new['unpruned']['n']}: not the same model and questions")
    reducers = {**earlier["reducers"], **new["reducers"]}
    skipped = {k: v for k, v in {**earlier.get("skipped", {}), **new["skipped"]}.items() if k not in reducers}
    return {"unpruned": new["unpruned"], "reducers": dict(sorted(reducers.items())), "skipped": skipped,
            "merged": {"measured": sorted(new["reducers"]), "earlier": earlier.get("machine", {}),
                       "earlier_unpruned": earlier["unpruned"]["accuracy"]}}


def section_title(section: str, results: dict) -> str:
    """The default section keeps its title; another one (a partial run) says what it holds."""
    if section == SECTION:
        return ""
    keeps = sorted({k for rows in results["reducers"].values() for k in rows}, key=float, reverse=True)
    return (f"## Accuracy, partial run `{section}`: {', '.join(f'`{n}`' for n in results['reducers'])} at keep "
            f"{', '.join(keeps)} on the first {results['unpruned']['n']} held-out questions")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test questions (type-balanced)")
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--reducers", nargs="*", default=None, help="default: every registered reducer")
    p.add_argument("--keeps", type=float, nargs="*", default=None, help=f"default: {' '.join(map(str, KEEPS))}")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="keep the other reducers' rows of an earlier --json run (same model and questions; its unpruned "
                        "accuracy must be re-measured equal) and write the combined table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--from-json", action="store_true",
                   help="only rewrite the BENCHMARKS.md section and the plot from an existing --json file")
    p.add_argument("--record", action="store_true",
                   help="also store the scores of the fixed test slices in <model>/eval.json (tests compare with them)")
    p.add_argument("--md", default="BENCHMARKS.md")
    p.add_argument("--section", default=SECTION, help="the BENCHMARKS.md section to write (a partial run: another name)")
    p.add_argument("--json", default=str(RESULTS / "accuracy.json"))
    p.add_argument("--png", default=str(RESULTS / "accuracy.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        saved = json.loads(Path(args.json).read_text())
        plot(saved, saved["majority"], Path(args.png))
        replace_section(args.md, args.section, markdown(saved, saved["majority"], saved["machine"], Path(args.png).name,
                                                       section_title(args.section, saved)))
        if saved["unpruned"]["n"] == len(held_out_set()):
            replace_section(Path(args.model) / "MODEL_CARD.md", "pruning", card_markdown(saved))
        return 0
    items = held_out_set()[:args.limit] if args.limit else held_out_set()
    model, processor = load(args.model)
    if args.record:
        path = Path(args.model) / "eval.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        record["test_slices"] = slice_scores(model, processor)
        path.write_text(json.dumps(record, indent=1))
        print(f"recorded test slices in {path}: {record['test_slices']}")
    start = time.time()
    earlier = json.loads(Path(args.merge).read_text()) if args.merge else None
    results = run_all(model, processor, items, args.batch, args.reducers, tuple(args.keeps or KEEPS))
    if earlier is not None:
        results = merge_results(earlier, results)
    majority = majority_baseline(items)
    info = machine_info(model=str(Path(args.model).name), visual_tokens=144, questions=len(items),
                        seconds=round(time.time() - start, 1))
    write_json(args.json, {"machine": info, "majority": majority, "keeps": list(KEEPS), **results})
    plot(results, majority, Path(args.png))
    replace_section(args.md, args.section, markdown(results, majority, info, Path(args.png).name,
                                                         section_title(args.section, results)))
    if not args.limit and args.reducers is None:  # the card summarises full runs only
        replace_section(Path(args.model) / "MODEL_CARD.md", "pruning", card_markdown(results))
    un = results["unpruned"]
    print(f"unpruned {un['accuracy']:.3f} on {un['n']} questions; wrote {args.md}, {args.json}, {args.png}")
    for name, by_keep in results["reducers"].items():
        print(f"{name:>10}: " + "  ".join(f"{k}:{r['accuracy']:.3f}" for k, r in by_keep.items()))
    for name, reason in results["skipped"].items():
        print(f"{name:>10}: skipped ({reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
