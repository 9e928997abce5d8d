"""Scoring overhead of every pre-LLM reducer: patched prefill against an oracle fed the same kept count.

``python -m benchmarks.overhead [--quick] [--keep 0.25] [--repeats 5]``

On the efficiency benchmark's LLaVA-1.5-shaped model (576 visual tokens), each pre-LLM reducer runs
patched at the same ``keep``; the oracle is the stock model given the same number of kept tokens,
indices known in advance (vision tower + projector, gather, shrunk prompt, LLM). The oracle's cost
does not depend on which tokens are kept, only on how many, so (patched)/(oracle) is what the
reducer's scoring and vtr's splicing cost on top of a perfect zero-overhead selection. Merging
reducers (``pool``, ``aim`` merge stage) are compared with an oracle that gathers the same count.
On LLaVA-1.5 the same rounds also time vtr's own ``divrelay`` against the most accurate other reducer
at each budget of its claim (keep 0.05 and 0.1, read from the accuracy benchmark's results), with each
one's selection time and layer share: the claim's cost side, measured side by side.
Figures go to BENCHMARKS.md (section ``overhead``) and ``benchmarks/results/overhead.json``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch

import vtr
from benchmarks.efficiency import FULL, QUICK, build, oracle_prefill
from benchmarks.report import (RoundSummary, machine_info, machine_line, markdown_table, ratio_cell,
                               replace_section, time_rounds, write_json)

SECTION = "overhead"
#: (reducer, settings beyond keep) — every reducer with a pre-LLM stage that runs on LLaVA-1.5
CASES = [("fastervlm", {}), ("random", {}), ("fopru", {}), ("fopru", {"strategy": "row"}), ("vtc_cls", {}),
         ("pool", {}), ("aim", {"prune": False}),
         ("visionzip", {}), ("vispruner", {}), ("divprune", {}), ("cdpruner", {}), ("dart_pre", {}), ("divrelay", {})]
#: on LLaVA-NeXT (AnyRes, 672² → 5 views of 576), where globalcom2 also runs
NEXT_CASES = [("fastervlm", {}), ("globalcom2", {}), ("fopru", {}), ("vtc_cls", {}), ("pool", {})]


@dataclass
class Setup:
    """The model under test: a prefill call, and the oracle for a patched call's stats."""

    model: torch.nn.Module
    inputs: dict
    oracle_for: Callable  # stats -> (key: kept count, call)
    title: str
    section: str


def llava_setup(quick: bool) -> Setup:
    b = build(QUICK if quick else FULL, seed=0)

    def oracle_for(stats):
        kept = stats.views[0].kept.long()
        return len(kept), lambda: oracle_prefill(b, kept)

    return Setup(b.model, b.inputs, oracle_for, "the efficiency benchmark's model (LLaVA-1.5 geometry, 576 visual "
                 "tokens, random weights)", SECTION)


def llava_next_setup(quick: bool) -> Setup:
    from benchmarks import families

    case = families.build("llava_next", families.QUICK if quick else families.FULL, 0)

    def oracle_for(stats):
        cols = stats.kept_columns[0]
        return len(cols), lambda: families.oracle_prefill(case, cols)

    return Setup(case.model, case.inputs, oracle_for, "the families benchmark's LLaVA-NeXT (672² astronaut: "
                 "thumbnail + 4 crops of 576 patches, 2,928 visual tokens with image_newline, random weights)",
                 SECTION + "_llava_next")


@dataclass
class Call:
    label: str
    run: Callable[[], object]
    context: Callable = lambda: __import__("contextlib").nullcontext()


def case_label(name: str, settings: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in settings.items())


def patched_stats(setup: Setup, name: str, settings: dict, keep: float):
    """One untimed patched call's stats."""
    with vtr.patched(setup.model, name, keep=keep, **settings):
        with torch.no_grad():
            setup.model(**setup.inputs, logits_to_keep=1)
        return setup.model.vtr.stats


#: vtr's own reducer and the budgets its claim is made at (BENCHMARKS.md, accuracy section)
OWN, CLAIM_KEEPS = "divrelay", ("0.05", "0.1")
ACCURACY_JSON = "benchmarks/results/accuracy.json"


def claim_rivals(path: str = ACCURACY_JSON) -> dict[str, str]:
    """Per claim budget, the most accurate other reducer of the accuracy benchmark's results (read, not typed)."""
    import json
    from pathlib import Path

    if not Path(path).exists():
        return {}
    reducers = json.loads(Path(path).read_text())["reducers"]
    rivals = {}
    for keep in CLAIM_KEEPS:
        others = {n: rows[keep]["accuracy"] for n, rows in reducers.items() if n != OWN and keep in rows}
        if others:
            rivals[keep] = max(others, key=others.get)
    return rivals


def selection_ms(model, inputs, name: str, keep: float, repeats: int) -> float:
    """Least ``stats.seconds["select"]`` (the pre-LLM scoring: plan, merge, placement) of ``repeats`` calls,
    in ms; 0 for reducers without a pre-LLM stage (their scoring runs inside the timed prefill)."""
    best = float("inf")
    with vtr.patched(model, name, keep=keep), torch.no_grad():
        for _ in range(max(repeats, 1)):
            model(**inputs, logits_to_keep=1)
            best = min(best, model.vtr.stats.seconds.get("select", 0.0))
    return 1000 * best


def claim_markdown(claim: list[dict], source: str = ACCURACY_JSON) -> list[str]:
    if not claim:
        return []
    rows = [[r["keep"], f"`{r['own']}`", f"`{r['rival']}`", f"{r['own_min_s']:.3f}", f"{r['rival_min_s']:.3f}",
             ratio_cell(r["ratio"]), f"{r['own_select_ms']:.2f}", f"{r['rival_select_ms']:.2f}",
             f"{r['own_layer_share']:.3f}", f"{r['rival_layer_share']:.3f}"] for r in claim]
    return [
        f"vtr's own `{OWN}` against the most accurate other reducer at each claim budget (read from "
        f"`{source}`), timed in the same interleaved rounds: prefill min s, the ratio own / rival "
        "(below 1: cheaper), the pre-LLM selection time (`stats.seconds[\"select\"]`, least of the rounds; an "
        "in-LLM reducer scores inside its prefill) and the layer share on this model.",
        "",
        markdown_table(["keep", "own", "rival", "own min s", "rival min s", "own / rival", "own select ms",
                        "rival select ms", "own layers", "rival layers"], rows),
        "",
    ]


def main(argv: list[str] | None = None, log=print) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 1 round (smoke test)")
    p.add_argument("--model", choices=("llava", "llava_next"), default="llava")
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-foreign", type=float, default=0.25, help="discard calls during which others used more cores")
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--md", default="BENCHMARKS.md")
    p.add_argument("--json", default=None, help="default benchmarks/results/<section>.json")
    p.add_argument("--accuracy-json", default=ACCURACY_JSON, help="where the claim's rivals are read from")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats, args.max_foreign = 0, 1, float("inf")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        setup = (llava_next_setup if args.model == "llava_next" else llava_setup)(args.quick)
        model, inputs = setup.model, setup.inputs
        args.json = args.json or f"benchmarks/results/{setup.section}.json"
        cases = {}
        calls = [Call("unpatched", lambda: model(**inputs, logits_to_keep=1))]
        oracles = {}
        for name, settings in (NEXT_CASES if args.model == "llava_next" else CASES):
            stats = patched_stats(setup, name, settings, args.keep)
            k, oracle = setup.oracle_for(stats)
            label = case_label(name, settings)
            cases[label] = case = dict(name=name, settings=settings, k=k, visual=sum(stats.visual_tokens_out),
                                       flops_ratio=stats.flops_ratio)
            if k not in oracles:  # the oracle's cost depends on the count only
                oracles[k] = f"oracle k={k}"
                calls.append(Call(oracles[k], oracle))
            calls.append(Call(label, lambda: model(**inputs, logits_to_keep=1),
                              lambda case=case: vtr.patched(model, case["name"], keep=args.keep, **case["settings"])))
        claim, claim_skipped = [], {}
        for keep, rival in (claim_rivals(args.accuracy_json).items() if args.model == "llava" else ()):
            try:  # e.g. the quick model's 2-layer LLM has no layer 2 for an in-LLM rival
                own_stats, rival_stats = (patched_stats(setup, n, {}, float(keep)) for n in (OWN, rival))
            except ValueError as exc:
                claim_skipped[keep] = f"{rival}: {exc}"
                continue
            claim.append(dict(keep=keep, own=OWN, rival=rival,
                              own_select_ms=selection_ms(model, inputs, OWN, float(keep), args.repeats),
                              rival_select_ms=selection_ms(model, inputs, rival, float(keep), args.repeats),
                              own_layer_share=own_stats.layer_share[0], rival_layer_share=rival_stats.layer_share[0]))
            for name in (OWN, rival):
                calls.append(Call(f"{name}@{keep}", lambda: model(**inputs, logits_to_keep=1),
                                  lambda name=name, keep=keep: vtr.patched(model, name, keep=float(keep))))
        timing = time_rounds(calls, args.warmup, args.repeats, args.max_foreign, args.max_seconds, log=log)
    summary = RoundSummary([c.label for c in calls], timing, args.max_foreign)
    info = machine_info(dtype="float32", attention="sdpa", threads=args.threads)
    rows, records = [], []
    for label, case in cases.items():
        k = case["k"]
        row = summary.row(label)
        overhead = summary.ratio(label, oracles[k])
        speedup = summary.ratio("unpatched", label)
        records.append(dict(reducer=label, keep=args.keep, visual_tokens=case["visual"], prompt_tokens=k,
                            flops_ratio=case["flops_ratio"],
                            overhead_vs_oracle=overhead, speedup_vs_unpatched=speedup, **row))
        rows.append([f"`{label}`", case["visual"], f"{row['min_s']:.3f}", f"{row['median_s']:.3f}", row["n_clean"],
                     ratio_cell(overhead), ratio_cell(speedup, 2, "×"), f"{case['flops_ratio']:.3f}"])
    for k, label in oracles.items():
        row = summary.row(label)
        rows.append([f"oracle ({k}-token prompt)", "—", f"{row['min_s']:.3f}", f"{row['median_s']:.3f}", row["n_clean"],
                     "—", ratio_cell(summary.ratio("unpatched", label), 2, "×"), "—"])
    base = summary.row("unpatched")
    rows.append(["unpatched", "all", f"{base['min_s']:.3f}", f"{base['median_s']:.3f}",
                 base["n_clean"], "—", "1.00×", "1.000"])
    for record in claim:
        own, rival = f"{OWN}@{record['keep']}", f"{record['rival']}@{record['keep']}"
        record.update(own_min_s=summary.row(own)["min_s"], rival_min_s=summary.row(rival)["min_s"],
                      ratio=summary.ratio(own, rival))
    dropped, total = summary.dropped()
    md = "\n".join([
        f"## Scoring overhead of the pre-LLM reducers on {args.model} (`python -m benchmarks.overhead --model {args.model}`)",
        "",
        f"On {setup.title}, batch 1, keep = {args.keep}. Each reducer's patched prefill is compared with the oracle "
        "fed the same kept prompt length (indices known in advance): **overhead = patched / oracle**, what scoring and splicing add "
        "on top of a zero-cost selection (1.00 = free). Speed-up is against the unpatched prefill. "
        f"Interleaved rounds after {args.warmup} warm-up rounds; {dropped} of {total} calls discarded because other "
        "processes were busy. Ratios: min-time ratio (median of per-round ratios).",
        "",
        markdown_table(["reducer", "visual tokens", "min s", "median s", "n", "overhead vs oracle",
                        "speed-up vs unpatched", "FLOPs ratio"], rows),
        "",
        ("`globalcom2` runs on LLaVA-NeXT only (its own table); `quota` needs video input."
         if args.model == "llava" else "`random` and `aim` are in the LLaVA-1.5 table."),
        "",
        *claim_markdown(claim, args.accuracy_json),
        machine_line(info),
    ])
    if timing["budget_hit"]:
        md += "\n\n**Not enough quiet time: some rows have fewer clean samples than asked; treat them as rough.**"
    replace_section(args.md, setup.section, md)
    result = dict(machine=info, keep=args.keep, rows=records, oracles={str(k): summary.row(v) for k, v in oracles.items()},
                  unpatched=base, quick=args.quick, claim=claim, claim_skipped=claim_skipped)
    write_json(args.json, result)
    log(md)
    return result


if __name__ == "__main__":
    main()
