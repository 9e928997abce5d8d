"""The shared command-line options of the timed benchmarks: defaults per mode and clear range errors."""
from __future__ import annotations

import pytest

from benchmarks.timing_args import TimingDefaults, parse_timing_args, timing_parser

DEFAULTS = TimingDefaults(warmup=3, repeats=9, max_seconds=120.0, threads=2, quick_warmup=0, quick_repeats=1,
                          quick_max_seconds=2.0, quick_threads=1)


def parse(argv, keeps=(0.5, 0.1)):
    return parse_timing_args(timing_parser("benchmarks.x", "X benchmark.\n\nmore", "x", DEFAULTS, keeps), argv,
                             DEFAULTS)


def test_full_and_quick_defaults_and_explicit_values():
    full = parse([])
    assert (full.warmup, full.repeats, full.max_seconds, full.threads, full.max_foreign) == (3, 9, 120.0, 2, 0.25)
    assert full.keeps == [0.5, 0.1] and full.json == "benchmarks/results/x.json" and full.md == "BENCHMARKS.md"
    quick = parse(["--quick"])
    assert (quick.warmup, quick.repeats, quick.max_seconds, quick.threads) == (0, 1, 2.0, 1)
    assert quick.max_foreign == float("inf")
    given = parse(["--quick", "--repeats", "4", "--threads", "2", "--keeps", "0.25"])
    assert (given.repeats, given.threads, given.keeps) == (4, 2, [0.25])


def test_no_keeps_option_unless_asked():
    args = parse_timing_args(timing_parser("benchmarks.x", "X.", "x", DEFAULTS), [], DEFAULTS)
    assert not hasattr(args, "keeps")


@pytest.mark.parametrize("argv, named", [(["--keeps", "0.5", "1.5"], "--keeps"), (["--repeats", "0"], "--repeats"),
                                         (["--threads", "0"], "--threads")])
def test_out_of_range_values_are_refused_by_name(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2 and named in capsys.readouterr().err


def test_publish_writes_the_json_and_only_its_section(tmp_path):
    import json

    from benchmarks.timing_args import command_line, publish, timing_setup

    args = parse(["--quick"])
    args.json, args.md = str(tmp_path / "x.json"), str(tmp_path / "B.md")
    (tmp_path / "B.md").write_text("# Benchmarks\n\nhand-written\n")
    result = {"command": command_line("benchmarks.x", ["--quick"]), "setup": timing_setup(args)}
    assert publish(args, "x", result, lambda r: f"## X\n{r['command']}", log=lambda *_: None) is result
    assert json.loads((tmp_path / "x.json").read_text())["setup"]["repeats"] == 1
    md = (tmp_path / "B.md").read_text()
    assert "hand-written" in md and "<!-- x:begin -->\n## X\npython -m benchmarks.x --quick\n<!-- x:end -->" in md
