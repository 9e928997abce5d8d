"""VQA benchmarks: ``python -m benchmarks.vqa`` is ``vtr eval`` (the code lives in :mod:`vtr.eval`).

    python -m benchmarks.vqa --task vqav2 --data DIR --model PATH --reducers fastervlm --keeps 1.0 0.1 --out OUT
    accelerate launch --num_processes 2 -m benchmarks.vqa …     (on a CPU-only machine add --multi_gpu, see README)

``--record`` (this script only) also writes the ``vqa-<task>`` section of ``BENCHMARKS.md`` and
``benchmarks/results/vqa_<task>.json`` from the run's ``summary.json``, with the machine it ran on.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from vtr.eval.command import build_parser, main as eval_main

ROOT = Path(__file__).resolve().parent.parent


def record(argv: list[str], seconds: float) -> None:
    from benchmarks.report import machine_info, replace_section, write_json

    args = build_parser("python -m benchmarks.vqa").parse_args(argv)
    summary = json.loads((args.out / args.task / "summary.json").read_text(encoding="utf-8"))
    resumed = "--resume" in argv  # the wall time of a resumed command is not the run's
    argv = [a for a in argv if a != "--resume"]
    generate = sum(r["seconds_per_question"] * r["n"] for r in summary["runs"])
    info = machine_info(wall_seconds=None if resumed else round(seconds, 1), generate_seconds=round(generate, 1))
    summary["not_run"] = not_run(args, summary)
    write_json(ROOT / "benchmarks" / "results" / f"vqa_{args.task}.json", {"command": argv, "machine": info, **summary})
    picture = args.out / args.task / "plot.png"
    if picture.is_file():
        (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, ROOT / "benchmarks" / "results" / f"vqa_{args.task}.png")
    replace_section(ROOT / "BENCHMARKS.md", f"vqa-{args.task}", section(argv, summary, info, args.out / args.task))


def flat_budgets(runs: list[dict]) -> dict[str, float]:
    """Reducers whose runs below keep 1.0 all spent the same (mean visual tokens per decoder layer)."""
    out = {}
    for reducer in dict.fromkeys(r["reducer"] for r in runs if r["reducer"]):
        spent = {round(r["visual_tokens_layer_mean"], 3) for r in runs if r["reducer"] == reducer and r["keep"] != 1.0}
        if len([r for r in runs if r["reducer"] == reducer and r["keep"] != 1.0]) > 1 and len(spent) == 1:
            out[reducer] = spent.pop()
    return out


def not_run(args, summary: dict) -> dict:
    """``{reducer: why}`` for every registered reducer the run did not include (refused by the model, or
    not asked for)."""
    import vtr
    from vtr.eval.command import load_model, plan_runs, runnable

    ran = {r["reducer"] for r in summary["runs"]}
    others = [name for name in vtr.list_reducers() if name not in ran]
    if not others:
        return {}
    model, _ = load_model(args.model, args.dtype)
    takes, refused = runnable(model, plan_runs(others, args.keeps, args.seed), explicit=False)
    return {**refused, **{s.reducer: "not asked for (--reducers)" for s in takes if s.reducer is not None}}


def section(argv: list[str], summary: dict, info: dict, folder: Path) -> str:
    table = (folder / "summary.md").read_text(encoding="utf-8").split("\n", 2)[2]  # drop the "### task" title
    runs = summary["runs"]
    n = runs[0]["n"] if runs else 0
    lines = [
        f"## VQA harness: `{summary['task']}` (`python -m benchmarks.vqa`)",
        "",
        f"`python -m benchmarks.vqa {' '.join(argv)}` — the harness users point at VQAv2, GQA, TextVQA, POPE, "
        f"MME or ScienceQA files, here on the procedural `{summary['task']}` task with the shipped model "
        f"(`vtr.shapes.CHECKPOINT`, 144 visual tokens), n = {n} questions per run, greedy `generate`. "
        "Retention = accuracy / unpruned accuracy; visual tokens = entering the LLM and the mean over decoder "
        "layers; FLOPs ratio = analytic LLM prefill FLOPs from `model.vtr.stats` token counts "
        "(`vtr/ops/flops.py`), reduced / unreduced.",
        "",
        f"Measured {info.get('date', '')} on {info.get('cpu', '?')}, {info.get('torch_threads', '?')} threads, "
        f"torch {info.get('torch')}, transformers {info.get('transformers')}, {summary['processes']} process(es), "
        f"{info['generate_seconds']} s in `generate` over all runs"
        + (f", {info['wall_seconds']} s wall for the whole command." if info.get("wall_seconds") else ".")
        + " Timings come from a shared machine (other jobs running): read the seconds column as rough.",
        "",
        table.strip(),
    ]
    flat = flat_budgets(runs)
    if flat:
        lines += ["", "Keep did not set the budget of " + ", ".join(
            f"`{name}` (every keep < 1 spent {spent:.1f} visual tokens per layer)" for name, spent in flat.items())
            + ": this harness runs each reducer as configured, without tuning adaptive ones to a budget "
            "(`python -m benchmarks.accuracy` calibrates them with `vtr.calibrate` first)."]
    if (folder / "plot.png").is_file():
        lines += ["", f"![{summary['task']}: accuracy vs keep and vs FLOPs](benchmarks/results/vqa_{summary['task']}.png)"]
    if summary.get("not_run"):
        lines += ["", "Registered reducers not in this table:", ""]
        lines += [f"- `{name}`: {why}" for name, why in summary["not_run"].items()]
    lines += ["", f"Raw numbers: `benchmarks/results/vqa_{summary['task']}.json`."]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    import time

    recording = "--record" in argv
    argv = [a for a in argv if a != "--record"]
    start = time.perf_counter()
    status = eval_main(argv, prog="python -m benchmarks.vqa")
    if status == 0 and recording:
        record(argv, time.perf_counter() - start)
    return status


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
