"""Small helpers every benchmark shares: machine facts, interleaved timing that discards samples taken
while other processes compete for the CPU, JSON results, and generated markdown sections.

Each benchmark owns one section of ``BENCHMARKS.md``, fenced by ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; rerunning it replaces only that section, so benchmarks never clobber each
other's figures and hand-written text outside the markers survives.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

DEFAULT_HEADER = """# Benchmarks

Every figure below is generated: each section (between `<!-- NAME:begin -->` / `<!-- NAME:end -->`
markers) is written by the script it names, rerunning the script replaces only its section, and the
raw numbers (every timing of every round) are in `benchmarks/results/NAME.json`. Do not edit inside
the markers by hand.

How figures are measured, unless a section says otherwise:
- Wall-clock seconds from `time.perf_counter()` around the measured call, after warm-up rounds (the
  first calls of a PyTorch model are slow), with variants interleaved within each round so that a
  slower or busier stretch of the machine hits all of them alike; min and median over the rounds.
  Calls during which other processes kept the CPU busy are discarded and measured again
  (`benchmarks.report.CpuMeter`), and each section says how many were.
- The models are random-init models with the geometry of the real ones (no weights can be
  downloaded here): timings and FLOPs are meaningful, outputs are not.
- Each section records its machine (CPU, cores, library versions, dtype, attention kernel, date).
  Shared CPU machines are noisy; compare ratios measured in the same run rather than seconds
  across runs.
"""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(**extra: Any) -> dict[str, Any]:
    """Facts about the machine and libraries a figure was measured with.

    Args:
        **extra: benchmark-specific settings to record alongside (e.g. ``dtype="float32"``,
            ``attention="sdpa"``); they override the defaults of the same name.
    Returns:
        a JSON-ready dict: cpu, logical and usable cores, torch threads, accelerator (if any),
        python/torch/transformers versions, platform and the UTC date-time.
    """
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    info.update(extra)
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line summarising :func:`machine_info`'s output."""
    cores = f"{info.get('cores_usable')} cores"
    accel = f", {info['accelerator']}" if info.get("accelerator") else ""
    settings = ", ".join(f"{k} {info[k]}" for k in ("dtype", "attention") if k in info)
    return (
        f"Machine: {info.get('cpu')} ({cores}, torch threads {info.get('torch_threads')}{accel}); "
        f"python {info.get('python')}, torch {info.get('torch')}, transformers {info.get('transformers')}"
        + (f"; {settings}" if settings else "") + f"; measured {info.get('date')}."
    )


def _plain(value: Any) -> Any:
    """``value`` with what JSON cannot hold natively (tensors, numpy values, paths) converted."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _dumps(value: Any, indent: int = 0) -> str:
    """Indented JSON, but a list of plain numbers/strings stays on one line (index lists, timings)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 2) for v in value) + f"\n{pad}]"
    return json.dumps(value)


class CpuMeter:
    """Wall time of a block, and how much CPU *other* processes used meanwhile (Linux ``/proc``).

    A shared machine makes timings meaningless while another process competes for the cores (with
    2 cores and 2 OpenMP threads, one busy neighbour can slow a forward pass several-fold). The
    meter reads the machine's busy ticks and this process's own ticks around the block:
    ``foreign_cores`` is the average number of cores others kept busy, so a benchmark can discard
    or repeat contended samples. Tick resolution is 1/``SC_CLK_TCK`` s (10 ms): about ±0.1 core on a
    0.2 s block. Off Linux ``foreign_cores`` is ``None``.

    >>> with CpuMeter() as m:
    ...     work()
    >>> m.seconds, m.foreign_cores
    """

    def __enter__(self) -> "CpuMeter":
        self._ticks = _busy_ticks(), _own_ticks()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        busy, own = _busy_ticks(), _own_ticks()
        if None in (busy, own, *self._ticks) or self.seconds <= 0:
            self.foreign_cores = None
            return
        foreign = (busy - self._ticks[0]) - (own - self._ticks[1])
        self.foreign_cores = max(0.0, foreign / os.sysconf("SC_CLK_TCK") / self.seconds)


def _busy_ticks() -> int | None:
    """Ticks all CPUs spent on anything but idle/iowait since boot (first line of /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(values[:8]) - values[3] - values[4]  # user nice system idle iowait irq softirq steal


def _own_ticks() -> int | None:
    """User + system ticks of this process, all threads (fields 14-15 of /proc/self/stat)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def wait_for_quiet(threshold: float, patience: float, window: float = 0.5) -> float:
    """Sleep until other processes use at most ``threshold`` cores over a ``window``-second sample,
    or ``patience`` seconds have passed; returns the seconds waited."""
    start = time.perf_counter()
    while patience > 0:
        with CpuMeter() as meter:
            time.sleep(window)
        waited = time.perf_counter() - start
        if meter.foreign_cores is None or meter.foreign_cores <= threshold or waited >= patience:
            return waited
    return 0.0


def time_rounds(vs: Sequence[Any], warmup: int, repeats: int, max_foreign: float, budget_s: float,
                log=print) -> dict:
    """Time every variant once per round, until each has ``repeats`` clean samples or the budget is spent.

    A sample is clean when other processes kept at most ``max_foreign`` cores busy during the call
    (:class:`~benchmarks.report.CpuMeter`); before each measured call we wait (briefly) for such a
    quiet moment, so a neighbour's burst costs a wait rather than a round. The order rotates per
    round so no variant always follows the same one. Returns ``seconds`` and ``foreign`` as
    ``[call][round]`` lists, plus ``rounds``, ``waited_s`` and ``budget_hit``.

    Args:
        vs: the calls, each with ``label`` (for the log), ``run()`` (the timed call) and ``context()``
            (a context manager entered around it, untimed: e.g. patching a model).
    """
    seconds, foreign = [[] for _ in vs], [[] for _ in vs]
    start, waited, r = time.perf_counter(), 0.0, -warmup
    gate = max_foreign != float("inf")

    def n_clean() -> int:
        return min(sum(f is None or f <= max_foreign for f in fs) for fs in foreign)

    def remaining() -> float:
        return budget_s - (time.perf_counter() - start)

    while r < repeats or n_clean() < repeats:
        if r >= repeats and remaining() <= 0:
            break
        shift = r % len(vs)
        row = [(0.0, None)] * len(vs)
        for i in list(range(shift, len(vs))) + list(range(shift)):
            if gate and r >= 0:
                waited += wait_for_quiet(max_foreign, patience=max(0.0, min(remaining(), 20.0)), window=0.25)
            with vs[i].context():
                with CpuMeter() as meter:
                    vs[i].run()
            row[i] = (meter.seconds, meter.foreign_cores)
        if r >= 0:
            for i, (sec, fc) in enumerate(row):
                seconds[i].append(sec)
                foreign[i].append(fc)
        name = f"round {r + 1}" if r >= 0 else f"warm-up {r + warmup + 1}/{warmup}"
        busy = max((fc or 0.0) for _, fc in row)
        log(f"{name} (others up to {busy:.2f} cores): " + ", ".join(
            f"{v.label} {sec:.3f}" for v, (sec, _) in zip(vs, row)))
        r += 1
    return dict(seconds=seconds, foreign=foreign, rounds=len(seconds[0]), waited_s=waited,
                budget_hit=n_clean() < repeats)


def paired_median(num: list[float], den: list[float]) -> float:
    """Median over rounds of per-round ratios: robust to the machine being busier in some rounds."""
    return statistics.median(n / d for n, d in zip(num, den))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (parent folders created); returns the path.

    Values JSON cannot hold natively (tensors, numpy scalars, paths) are written via ``tolist()`` or
    ``str()`` rather than failing at the end of a long run. Lists of scalars stay on one line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(_plain(data)) + "\n", encoding="utf-8")
    return path


def markers(name: str) -> tuple[str, str]:
    """The begin/end marker lines of section ``name``."""
    if not _NAME.match(name):
        raise ValueError(f"section name {name!r} must be letters, digits, '.', '_' or '-'")
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(md_path: str | os.PathLike, name: str, markdown: str, header: str = DEFAULT_HEADER) -> Path:
    """Put ``markdown`` between the markers of section ``name`` in ``md_path``; returns the path.

    The file is created (starting with ``header``) when missing; a section not yet in the file is
    appended at the end; an existing one is replaced in place, leaving the rest of the file as is.
    Raises ``ValueError`` when the markers are unbalanced or repeated, rather than guessing.
    """
    path = Path(md_path)
    begin, end = markers(name)
    block = f"{begin}\n{markdown.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else header.rstrip() + "\n"
    n_begin, n_end = text.count(begin), text.count(end)
    if n_begin == n_end == 0:
        text = text.rstrip("\n") + "\n\n" + block
    elif n_begin == n_end == 1 and text.index(begin) < text.index(end):
        start, stop = text.index(begin), text.index(end) + len(end)
        rest = text[stop:]
        text = text[:start] + block + (rest[1:] if rest.startswith("\n") else rest)
    else:
        raise ValueError(
            f"{path}: section {name!r} has {n_begin} begin and {n_end} end marker(s) (need one of each, begin "
            "first); fix the file by hand"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column (``l``/``r``), default left
    for the first column and right for the others."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class RoundSummary:
    """Clean samples and ratios of one :func:`time_rounds` run, looked up by variant label.

    A sample is clean when other processes kept at most ``max_foreign`` cores busy during the call.
    A variant with no clean sample falls back to all of its samples (``contended(label)`` says so).

    >>> s = RoundSummary([v.label for v in vs], timing, max_foreign=0.25)
    >>> s.row("unpatched")["min_s"], s.ratio("unpatched", "fastervlm@0.1")["min"]
    """

    def __init__(self, labels: Sequence[str], timing: dict, max_foreign: float) -> None:
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant labels must be unique, got {list(labels)}")
        self.raw = dict(zip(labels, timing["seconds"]))
        self.foreign = dict(zip(labels, timing["foreign"]))
        self.clean = {k: [f is None or f <= max_foreign for f in fs] for k, fs in self.foreign.items()}

    def n_clean(self, label: str) -> int:
        return sum(self.clean[label])

    def contended(self, label: str) -> bool:
        return not any(self.clean[label])

    def samples(self, label: str) -> list[float]:
        """The clean samples of ``label`` (all samples when none is clean)."""
        kept = [t for t, c in zip(self.raw[label], self.clean[label]) if c]
        return kept or list(self.raw[label])

    def ratio(self, num: str, den: str) -> dict[str, float]:
        """``min``: ratio of the min times; ``paired``: median of per-round ratios over rounds where
        both calls were clean (all rounds when there is none)."""
        both = [(a, b) for a, b, ca, cb in zip(self.raw[num], self.raw[den], self.clean[num], self.clean[den])
                if ca and cb]
        paired = paired_median(*zip(*both)) if both else paired_median(self.raw[num], self.raw[den])
        return {"min": min(self.samples(num)) / min(self.samples(den)), "paired": paired}

    def row(self, label: str) -> dict[str, Any]:
        """``min_s``, ``median_s``, ``n_clean``, ``contended`` and the raw ``times_s`` / ``foreign_cores``."""
        t = self.samples(label)
        return dict(min_s=min(t), median_s=statistics.median(t), n_clean=self.n_clean(label),
                    contended=self.contended(label), times_s=list(self.raw[label]),
                    foreign_cores=list(self.foreign[label]))

    def spread(self) -> tuple[float, float]:
        """Smallest and largest ``median / min - 1`` over the variants: how far clean samples spread."""
        values = [statistics.median(self.samples(k)) / min(self.samples(k)) - 1 for k in self.raw]
        return min(values), max(values)

    def dropped(self) -> tuple[int, int]:
        """``(discarded calls, all measured calls)``."""
        total = sum(len(c) for c in self.clean.values())
        return total - sum(sum(c) for c in self.clean.values()), total


def ratio_cell(ratio: dict[str, float] | None, digits: int = 3, suffix: str = "") -> str:
    """``"0.917 (0.965)"``: the min-time ratio and, in brackets, the paired median; ``"—"`` for None."""
    if not ratio:
        return "—"
    return f"{ratio['min']:.{digits}f}{suffix} ({ratio['paired']:.{digits}f}{suffix})"


def kv_cache_mib(output: Any) -> float:
    """MiB held by the KV cache a prefill returned (keys + values of every layer)."""
    return sum(n for n in kv_cache_bytes(output)) / 2**20


def kv_cache_bytes(output: Any) -> list[int]:
    """Bytes of keys + values per decoder layer of the cache a prefill returned (``output.cache``)."""
    import torch

    sizes = []
    for layer in getattr(getattr(output, "cache", None), "layers", []) or []:
        total = 0
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        sizes.append(total)
    return sizes


def kv_cache_lengths(output: Any) -> list[int]:
    """Cached sequence length per decoder layer (entries along the sequence axis of the keys)."""
    import torch

    lengths = []
    for layer in getattr(getattr(output, "cache", None), "layers", []) or []:
        keys = getattr(layer, "keys", None)
        lengths.append(int(keys.shape[-2]) if isinstance(keys, torch.Tensor) and keys.ndim >= 2 else 0)
    return lengths
