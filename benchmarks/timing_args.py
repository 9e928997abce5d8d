"""Command-line arguments shared by the timed benchmarks (efficiency, families, in_llm).

Each of them times interleaved rounds with :func:`benchmarks.report.time_rounds` and writes one section
of ``BENCHMARKS.md`` plus a JSON file, so they take the same options; only the defaults differ, and
``--quick`` (a smoke test on tiny models) switches to its own set of defaults.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TimingDefaults:
    """Defaults of one benchmark, for a full run and for ``--quick``."""

    warmup: int = 2
    repeats: int = 7
    max_seconds: float = 300.0
    threads: int = 2
    quick_warmup: int = 1
    quick_repeats: int = 2
    quick_max_seconds: float = 3.0
    quick_threads: int = 1  # tiny ops only pay for thread synchronisation


def timing_parser(module: str, doc: str, section: str, defaults: TimingDefaults,
                  keeps: Sequence[float] | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared options; ``keeps`` adds ``--keeps`` with that default.

    The timing options default to ``None`` so that :func:`parse_timing_args` can tell "not given" from
    a value and fill in the full-run or ``--quick`` default."""
    d = defaults
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.strip().split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, few rounds, no contention gate: a smoke test")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"warm-up rounds (default {d.warmup}; {d.quick_warmup} with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"clean samples wanted per variant (default {d.repeats}; {d.quick_repeats} with --quick)")
    p.add_argument("--max-foreign", type=float, default=None,
                   help="discard a call when other processes used more than this many cores meanwhile "
                        "(default 0.25; 'inf', the --quick default, keeps every call)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help=f"time budget of the measured rounds (default {d.max_seconds:g}; "
                        f"{d.quick_max_seconds:g} with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch intra-op threads (default {d.threads}; {d.quick_threads} with --quick)")
    p.add_argument("--seed", type=int, default=0)
    if keeps is not None:
        p.add_argument("--keeps", type=float, nargs="+", default=list(keeps),
                       help=f"keep ratios (default {' '.join(map(str, keeps))})")
    p.add_argument("--md", default="BENCHMARKS.md", help=f"markdown file whose '{section}' section is replaced")
    p.add_argument("--json", default=f"benchmarks/results/{section}.json", help="raw results")
    return p


def parse_timing_args(p: argparse.ArgumentParser, argv: Sequence[str] | None,
                      defaults: TimingDefaults) -> argparse.Namespace:
    """Parse ``argv``, fill the unset timing options from ``defaults`` and check their ranges."""
    args = p.parse_args(argv)
    quick, d = args.quick, defaults
    fill = {"warmup": d.quick_warmup if quick else d.warmup, "repeats": d.quick_repeats if quick else d.repeats,
            "max_foreign": float("inf") if quick else 0.25,
            "max_seconds": d.quick_max_seconds if quick else d.max_seconds,
            "threads": d.quick_threads if quick else d.threads}
    for name, value in fill.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("need --repeats >= 1, --warmup >= 0 and --threads >= 1")
    if not all(0 < k <= 1 for k in getattr(args, "keeps", [])):
        p.error(f"--keeps must be ratios in (0, 1], got {args.keeps}")
    return args


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that produced a result, for its JSON record."""
    import sys

    return " ".join([f"python -m {module}", *(argv if argv is not None else sys.argv[1:])])


def timing_setup(args: argparse.Namespace) -> dict:
    """The timing options a result was measured with, for its JSON record."""
    return dict(quick=args.quick, warmup=args.warmup, repeats=args.repeats, max_foreign=args.max_foreign,
                max_seconds=args.max_seconds, seed=args.seed)


def publish(args: argparse.Namespace, section: str, result: dict, markdown, log=print) -> dict:
    """Write ``result`` to ``args.json`` and ``markdown(result)`` into section ``section`` of ``args.md``."""
    from benchmarks.report import replace_section, write_json

    write_json(args.json, result)
    replace_section(args.md, section, markdown(result))
    log(f"wrote {args.json} and the '{section}' section of {args.md}")
    return result
