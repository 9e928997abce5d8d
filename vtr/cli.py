"""The ``vtr`` command line: ``vtr reducers``, ``vtr run`` and ``vtr demo``.

    vtr reducers
    vtr demo [--out DIR] [--random]                   # the README's main job (python -m vtr.demo)
    vtr run --model ./llava-1.5-7b-hf --image photo.jpg --prompt "What is shown?" --keep 0.1 --overlay kept.png
    vtr run --model tiny:llava --image photo.jpg --prompt "What is shown?"   # built-in tiny random model
    vtr eval --task vqav2 --data DIR --model PATH --reducers fastervlm --keeps 1.0 0.1   # benchmarks (vtr.eval)

Nothing is downloaded: ``--model`` is a local folder (or a model already in the local Hugging Face
cache), loaded with ``local_files_only=True``. Bad input prints one line naming the argument on
stderr and exits with status 2; unexpected failures keep their traceback, since they are bugs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TINY_PREFIX = "tiny:"
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; the message names the argument."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block and exits; raise instead so main() prints one line.
    def error(self, message: str):
        raise UsageError(message)


def parse_keep(text: str) -> float | int:
    """``"0.1"`` → ratio ``0.1``; ``"58"`` → count ``58`` (vtr's own keep convention)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a ratio in (0, 1] like 0.1 or a token count like 58, got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vtr", description="Visual token reduction for transformers vision-language models.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    reducers = commands.add_parser("reducers", help="list the registered reducers")
    reducers.set_defaults(func=cmd_reducers)

    demo = commands.add_parser("demo", help="run the demo on the shipped tiny model (same as python -m vtr.demo)",
                               add_help=False)
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="arguments of python -m vtr.demo (see --help)")
    demo.set_defaults(func=cmd_demo)

    from vtr.eval.command import DESCRIPTION, add_arguments

    evaluate = commands.add_parser("eval", help="score reducers on a VQA benchmark's files (same as python -m benchmarks.vqa)",
                                   description=DESCRIPTION)
    add_arguments(evaluate).set_defaults(func=cmd_eval)

    run = commands.add_parser("run", help="answer a prompt about an image with a patched model")
    run.add_argument("--model", required=True, metavar="PATH_OR_ID",
                     help="local model folder (or a model in the local HF cache), or tiny:llava for the built-in tiny random model")
    media = run.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", metavar="IMG", help="image file")
    media.add_argument("--video", metavar="VIDEO", help="video file (mp4 ...), for models that take video")
    run.add_argument("--frames", type=positive_int, default=8, metavar="N",
                     help="frames sampled uniformly from --video (default 8)")
    run.add_argument("--prompt", required=True, metavar="TEXT",
                     help="question; wrapped in the model's chat format unless it holds the image token")
    run.add_argument("--reducer", default="fastervlm", help="reducer name (see `vtr reducers`; default fastervlm)")
    run.add_argument("--keep", type=parse_keep, default=0.1,
                     help="visual tokens kept per view: a ratio in (0, 1] like 0.1, or a count like 58 (default 0.1)")
    run.add_argument("--positions", choices=("original", "renumber"), default="original",
                     help="position ids of kept tokens (default original)")
    run.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N", help="default 32")
    run.add_argument("--overlay", metavar="OUT.png", help="write a picture of the kept patches here")
    run.add_argument("--seed", type=int, default=0, metavar="S",
                     help="torch seed, and the reducer's seed where it has one (e.g. random); default 0")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vtr`` script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo parses its own options (argparse subparsers cannot pass --out through)
        return run_demo(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as error:
        print(f"vtr: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def run_demo(demo_argv: list[str]) -> int:
    from vtr import demo

    try:
        return demo.main(demo_argv)
    except SystemExit as done:  # argparse inside the demo: --help, or one usage line on stderr
        return int(done.code or 0)


def cmd_demo(args) -> int:
    return run_demo(args.demo_args)


def cmd_eval(args) -> int:
    from vtr.eval.command import run

    return run(args, prog="vtr eval")


def cmd_reducers(args) -> int:
    import vtr

    reducers = vtr.list_reducers()
    width = max(map(len, reducers), default=0)
    for name, description in reducers.items():
        print(f"{name:<{width}}  {description}")
    return 0


# -- vtr run -------------------------------------------------------------------------------------

def make_reducer_config(args):
    """The validated reducer config, before any model is loaded (bad settings fail fast)."""
    import vtr
    from vtr.config import check_keep, field_names
    from vtr.registry import get_spec, make_config

    if args.reducer not in vtr.list_reducers():
        raise UsageError(f"--reducer: unknown reducer {args.reducer!r}; available: {', '.join(vtr.list_reducers())}")
    try:
        check_keep(args.keep, "--keep")
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    settings = {"keep": args.keep, "positions": args.positions}
    if "seed" in field_names(get_spec(args.reducer).config_class):
        settings["seed"] = args.seed
    try:
        return make_config(args.reducer, settings)[1]
    except (TypeError, ValueError) as error:
        raise UsageError(f"--reducer {args.reducer}: {error}") from None


def load_model(name: str):
    """``(model, processor, note)`` for a local folder, a locally cached hub id, or ``tiny:<family>``."""
    if name.startswith(TINY_PREFIX):
        from vtr.testing import tiny_model

        try:
            model, processor = tiny_model(name[len(TINY_PREFIX):])
        except ValueError as error:  # unknown family; the message lists the available ones
            raise UsageError(f"--model: {name!r}: {error}") from None
        return model, processor, "tiny random-weight model: answers are gibberish, token counts and timings are real"

    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if path.is_file():
        raise UsageError(f"--model: {name!r} is a file; pass the model folder (the one holding config.json)")
    if looks_like_path and not path.exists():
        raise UsageError(f"--model: no such model folder {name!r}")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = str(path) if path.exists() else name
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=True)
        processor = AutoProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        where = "folder" if path.exists() else "name (not a local folder nor in the local Hugging Face cache; vtr never downloads)"
        raise UsageError(f"--model: cannot load {name!r} as an image-text model from that {where}: {first_line(error)}") from None
    return model.eval(), processor, ""


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def build_prompt(processor, prompt: str, kind: str = "image") -> str:
    """``prompt`` as-is if it already holds the media token, else in the model's chat format."""
    from vtr.testing import chat_prompt

    default = "<image>" if kind == "image" else "<video>"
    media_token = getattr(processor, f"{kind}_token", None) or default
    if media_token in prompt:
        return prompt
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return chat_prompt(prompt, media_token)


def load_media(args):
    """``(kind, media)``: an RGB image, or ``(T, H, W, 3)`` uint8 frames sampled from the video."""
    from vtr.media import load_image, load_video

    if args.video is not None:
        try:
            return "video", load_video(args.video, args.frames)
        except (ValueError, ImportError) as error:
            raise UsageError(f"--video: {error}") from None
    try:
        return "image", load_image(args.image)
    except ValueError as error:
        raise UsageError(f"--image: {error}") from None


def cmd_run(args) -> int:
    import dataclasses

    import torch

    import vtr

    config = make_reducer_config(args)
    if args.overlay:
        check_writable(args.overlay)  # before the model runs, not after
    kind, media = load_media(args)
    model, processor, note = load_model(args.model)
    if getattr(config, "processor", False) is None:  # reducers that prompt the model themselves (QuoTA)
        config.processor = processor
    try:  # by name: a config class may be shared by several registered reducers
        vtr.patch(model, args.reducer, **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    except (TypeError, ValueError) as error:
        raise UsageError(f"--model: {error}") from None

    torch.manual_seed(args.seed)
    text = build_prompt(processor, args.prompt, kind)
    try:
        inputs = processor(**{f"{kind}s": [media] if kind == "video" else media}, text=text, return_tensors="pt")
    except (TypeError, ValueError) as error:
        raise UsageError(f"--{kind}: this model's processor cannot take a {kind}: {first_line(error)}") from None
    if kind == "video" and inputs.get("pixel_values_videos") is None:  # some processors ignore videos silently
        from vtr.adapters import ADAPTERS

        video_families = [a.family for a in ADAPTERS if "pixel_values_videos" in a.visual_inputs]
        raise UsageError(f"--video: {type(model).__name__} takes images only; models that take video: "
                         f"{', '.join(video_families)}")
    try:
        start = time.perf_counter()
        try:
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        except (TypeError, ValueError) as error:  # vtr refuses this input for this reducer/model, naming why
            raise UsageError(f"--reducer {args.reducer}: {first_line(error)}") from None
        generate_seconds = time.perf_counter() - start
        stats = model.vtr.stats
        pictures = make_overlay(model, inputs, processor) if args.overlay else None
    finally:
        vtr.unpatch(model)
    answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()

    if note:
        print(f"note: {note}")
    print(f"answer: {answer}")
    print(f"reducer: {config_line(stats.reducer, config)}")
    print(f"visual tokens: {sum(stats.visual_tokens_in)} -> {sum(stats.visual_tokens_out)} ({stats.keep_ratio:.1%} kept)")
    if any(stage.startswith("llm_layer_") for stage in stats.stages):  # pruned inside the LLM: per-layer counts
        shares = stats.layer_share
        print(f"visual tokens per decoder layer: {sum(shares) / max(1, len(shares)):.1%} of the input on average")
    print(f"prefill FLOPs ratio: {stats.flops_ratio:.3f} (analytic, LLM prefill only)")
    print(
        f"timings: vision {stats.seconds.get('vision', 0.0):.3f} s, select {stats.seconds.get('select', 0.0):.4f} s, "
        f"generate total {generate_seconds:.3f} s"
    )
    if pictures is not None:
        write_overlay(args.overlay, pictures)
        print(f"overlay: {args.overlay} ({len(pictures[0])} view{'s' if len(pictures[0]) != 1 else ''})")
    return 0


def config_line(name: str, config) -> str:
    import dataclasses

    return f"{name} (" + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()) + ")"


def check_writable(path: str) -> None:
    """``--overlay`` must name a file that can be written (its folder is created if missing)."""
    import os

    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"--overlay: {path!r} is a folder; pass a file name such as kept.png")
    folder = target.parent
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or (
            target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"--overlay: cannot write {path!r} (no write permission in {str(existing)!r})")


def make_overlay(model, inputs, processor):
    """``(pictures, titles)`` of every view of the call just made (see :func:`vtr.media.overlay.call_overlays`)."""
    from vtr.media.overlay import call_overlays

    try:
        pictures, titles = call_overlays(model, inputs, processor, outline=(255, 220, 0), scale=2)
    except ValueError as error:
        raise UsageError(f"--overlay: {first_line(error)}") from None
    return pictures, titles


def write_overlay(path: str, pictures) -> None:
    from vtr.media.overlay import side_by_side

    images, titles = pictures
    try:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        if len(images) == 1:
            images[0].save(Path(path).expanduser(), format="PNG")
        else:
            side_by_side(images, titles, Path(path).expanduser())
    except OSError as error:
        raise UsageError(f"--overlay: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
