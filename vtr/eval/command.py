"""``vtr eval`` / ``python -m benchmarks.vqa``: score reducers on a VQA benchmark's files.

    vtr eval --task vqav2 --data ~/data/vqav2 --model ./llava-1.5-7b-hf --reducers fastervlm random --keeps 1.0 0.25 0.1
    vtr eval --task shapes --reducers all --limit 250            # the shipped model on the procedural task
    accelerate launch --num_processes 8 -m benchmarks.vqa --task gqa --data ~/data/gqa --model …   # sharded

Writes under ``OUT/<task>/``: per run (``unpruned/``, ``<reducer>/keep_<keep>/``) ``predictions.jsonl``
and ``metrics.json``; ``summary.md``, ``summary.json`` and ``plot.png`` for the task. Bad input (an unknown
task or reducer, a missing or malformed data file, a run folder that exists without ``--resume``) prints
one line naming the argument, file or field and exits with status 2, before anything is generated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vtr.eval import report, store
from vtr.eval.tasks import TASKS, DataError, get_task

EXIT_USAGE = 2
TINY_PREFIX = "tiny:"
DTYPES = ("float32", "bfloat16", "float16")


class UsageError(ValueError):
    """Bad command-line input; the message names the argument."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(message)


def keep_value(text: str) -> float | int:
    from vtr.config import check_keep

    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1] like 0.1 or a count like 58, got {text!r}") from None
    try:
        check_keep(value, "--keeps")
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return int(text)


DESCRIPTION = "Evaluate visual-token reducers on a VQA benchmark (VQAv2, GQA, TextVQA, POPE, MME, ScienceQA, shapes)."


def build_parser(prog: str = "vtr eval") -> argparse.ArgumentParser:
    return add_arguments(_Parser(prog=prog, description=DESCRIPTION))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``vtr eval`` on ``parser`` (the ``vtr`` command's subparser, or a standalone one)."""
    parser.epilog = "--data layouts: " + "; ".join(f"{name}: {task.layout}" for name, task in TASKS.items())
    parser.add_argument("--task", required=True, choices=list(TASKS), help="benchmark format")
    parser.add_argument("--data", type=Path, metavar="DIR", help="the task's files in their official layout (not for shapes)")
    parser.add_argument("--model", default=None, metavar="PATH_OR_ID",
                        help="local model folder, or tiny:llava etc. (default: the shipped shapes model)")
    parser.add_argument("--reducers", nargs="+", default=["fastervlm"], metavar="NAME",
                        help="reducers to run (see `vtr reducers`), or `all` for every one this model takes; default fastervlm")
    parser.add_argument("--keeps", nargs="+", type=keep_value, default=[1.0, 0.25, 0.1], metavar="KEEP",
                        help="keep values per reducer: ratios in (0, 1] or token counts (default 1.0 0.25 0.1)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N questions, in file order (POPE: random, popular, adversarial; shapes: type-balanced)")
    parser.add_argument("--batch", type=positive_int, default=8, metavar="B", help="questions per generate call (default 8)")
    parser.add_argument("--out", type=Path, default=Path("out/eval"), metavar="DIR", help="output folder (default out/eval)")
    parser.add_argument("--resume", action="store_true", help="continue runs in --out, skipping answered questions")
    parser.add_argument("--split", metavar="NAME", help="which split/file when the folder holds several (see each task)")
    parser.add_argument("--instruction", metavar="TEXT", help="replace the task's standard instruction ('' for none)")
    parser.add_argument("--max-new-tokens", type=positive_int, metavar="N", help="greedy decoding length (default per task)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of reducers that take one (random); default 0")
    return parser


def main(argv: list[str] | None = None, prog: str = "vtr eval") -> int:
    """Entry point of ``python -m benchmarks.vqa`` (and ``python -m vtr.eval.command``); the exit status."""
    try:
        args = build_parser(prog).parse_args(argv)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run(args, prog)


def run(args: argparse.Namespace, prog: str = "vtr eval") -> int:
    """Evaluate parsed arguments; a user error prints one line and returns 2 (as ``vtr eval`` does)."""
    try:
        evaluate(args)
        return 0
    except (UsageError, DataError, store.RunError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def load_model(name: str | None, dtype: str):
    """``(model, processor)`` from a local folder, the local HF cache, or ``tiny:<family>``; left padding."""
    import torch

    if name is None:
        from vtr.shapes import CHECKPOINT

        name = str(CHECKPOINT)
    if name.startswith(TINY_PREFIX):
        from vtr.testing import tiny_model

        try:
            model, processor = tiny_model(name[len(TINY_PREFIX):])
        except ValueError as error:
            raise UsageError(f"--model {name}: {error}") from None
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(name).expanduser()
        if not path.exists() and (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1):
            raise UsageError(f"--model: no such model folder {name!r}")
        source = str(path) if path.exists() else name
        try:
            model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=True, dtype=getattr(torch, dtype))
            processor = AutoProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as error:
            raise UsageError(f"--model: cannot load {name!r} locally (vtr never downloads): "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from None
    model = model.to(getattr(torch, dtype)).eval()
    processor.tokenizer.padding_side = "left"
    return model, processor


def plan_runs(names: list[str], keeps: list, seed: int) -> list:
    """The runs asked for, unpruned first (reducer names checked against the registry, no model needed)."""
    import vtr
    from vtr.config import field_names
    from vtr.eval import runner
    from vtr.registry import get_spec

    available = vtr.list_reducers()
    specs = [runner.RunSpec(None)]
    for name in (list(available) if names == ["all"] else names):
        if name not in available:
            raise UsageError(f"--reducers: unknown reducer {name!r}; available: {', '.join(available)} (or all)")
        settings = (("seed", seed),) if "seed" in field_names(get_spec(name).config_class) else ()
        specs += [runner.RunSpec(name, keep, settings) for keep in keeps]
    return specs


def runnable(model, specs: list, explicit: bool) -> tuple[list, dict]:
    """``specs`` this model takes, each patched once to check it, and ``{reducer: why}`` for the others.
    With ``explicit`` (reducers named on the command line) a refusal is an error instead."""
    import vtr

    kept, skipped = [], {}
    for spec in specs:
        if spec.reducer is not None and spec.reducer in skipped:
            continue
        try:
            with spec.patched(model):
                pass
        except (TypeError, ValueError) as error:
            if explicit:
                raise UsageError(f"--reducers {spec.reducer}: {str(error).splitlines()[0]}") from None
            skipped[spec.reducer] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        kept.append(spec)
    assert not vtr.is_patched(model)
    return [s for s in kept if s.reducer not in skipped], skipped


def run_specs(model, names: list[str], keeps: list, seed: int) -> tuple[list, dict]:
    """:func:`plan_runs` then :func:`runnable`: the runs to make and the reducers ``all`` skips."""
    return runnable(model, plan_runs(names, keeps, seed), explicit=names != ["all"])


def evaluate(args) -> dict | None:
    """Run every (reducer, keep) of ``args`` on ``args.task``; returns the summary on the main process."""
    from vtr.eval import runner

    task = get_task(args.task)
    instruction = task.instruction if args.instruction is None else args.instruction
    max_new_tokens = args.max_new_tokens or task.max_new_tokens
    if args.data is None and task.name != "shapes":
        raise UsageError(f"--data is required for --task {task.name} (expected: {task.layout})")
    questions = task.load(args.data.expanduser() if args.data else None, args.split)
    questions = questions[:args.limit] if args.limit else questions
    if not questions:
        raise DataError(f"--data {args.data}: no questions found for task {task.name}")
    ids = [q.question_id for q in questions]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"--data {args.data}: question_id {duplicate!r} occurs more than once")

    procs = runner.Processes()
    planned = plan_runs(args.reducers, args.keeps, args.seed)
    root = args.out / task.name
    common = {"task": task.name, "model": args.model or "vtr.shapes.CHECKPOINT", "split": args.split,
              "instruction": instruction, "max_new_tokens": max_new_tokens, "dtype": args.dtype}
    settings = {spec: {**common, "reducer": spec.reducer, "keep": spec.keep, "reducer_settings": dict(spec.settings)}
                for spec in planned}
    for spec in planned:  # every run folder is checked before the model loads and anything is answered
        store.check(spec.folder(root), settings[spec], args.resume)
    model, processor = load_model(args.model, args.dtype)
    model.to(procs.device)
    specs, skipped = runnable(model, planned, explicit=args.reducers != ["all"])
    procs.barrier()
    if procs.is_main:
        for spec in specs:
            store.record(spec.folder(root), settings[spec])

    by_id = {q.question_id: q for q in questions}
    runs, unpruned = [], None
    for spec in specs:
        rows = runner.run(model, processor, task, questions, spec, root, batch=args.batch, instruction=instruction,
                          max_new_tokens=max_new_tokens, resume=args.resume, procs=procs)
        if rows is None:
            continue
        measured = runner.summarise(task, rows, by_id)
        summary = report.with_retention(measured, task.headline, measured if spec.reducer is None else unpruned)
        summary = {"run": spec.label, "task": task.name, "reducer": spec.reducer, "keep": spec.keep, **summary,
                   "settings": settings[spec]}
        unpruned = summary if spec.reducer is None else unpruned
        report.write_json(spec.folder(root) / "metrics.json", summary)
        runs.append(summary)
    if not procs.is_main:
        procs.close()
        return None
    result = {"task": task.name, "headline": list(task.headline), "runs": runs, "skipped": skipped,
              "processes": procs.world, "environment": report.environment()}
    report.write_json(root / "summary.json", result)
    table = report.markdown_summary(task.name, task.headline, runs, skipped)
    (root / "summary.md").write_text(table, encoding="utf-8")
    picture = report.plot(root / "plot.png", task.name, task.headline, runs)
    print(table)
    print(f"wrote {root}/summary.md, summary.json" + (", plot.png" if picture else "") + " and per-run predictions/metrics")
    procs.close()
    return result


if __name__ == "__main__":
    sys.exit(main())
