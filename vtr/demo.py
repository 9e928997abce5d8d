"""``python -m vtr.demo [--out DIR] [--random]``: the README's main job, end to end, on embedded defaults.

By default the project's trained tiny LLaVA (``vtr/shapes/tiny-llava-shapes``: a stock
``LlavaForConditionalGeneration`` with **144 visual tokens**, trained by ``benchmarks/train_tiny_llava.py``
on the procedural shapes task of ``vtr/shapes``) looks at a held-out scene and answers a few
questions unpatched, then patched with FasterVLM at two keep ratios, and the patch is undone. It prints the
answers (marked against the scene's true answers), visual tokens kept, timings and the analytic prefill
FLOPs ratio, and writes overlay PNGs of the kept patches to ``DIR`` (default ``out/``).

Without that checkpoint (or with ``--random``) it falls back to a tiny LLaVA-1.5-shaped model with
**random weights** (built offline by :mod:`vtr.testing`) and scikit-image's astronaut photo: the token
selection, timings and FLOPs are real there, the answers are gibberish.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vtr.shapes import CHECKPOINT as MODEL  # ships inside the package

QUESTION = "what is in the image?"
KEEPS = (0.25, 0.1)
MAX_NEW_TOKENS = 12
REPEATS = 3  # best-of-3 wall time: single runs on a shared 2-core CPU are noisy
SCENE_INDEX = 0  # which held-out test item's scene the trained-model demo shows


def astronaut():
    """scikit-image's astronaut photo (512×512 RGB, public domain) as a PIL image; ships with the package."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def timed_generate(model, inputs, repeats: int = REPEATS, max_new_tokens: int = MAX_NEW_TOKENS):
    """Greedy ``generate`` over ``repeats`` runs: output ``(B, prompt + new)``, the best wall time,
    and that run's ``model.vtr.stats`` (``None`` unpatched), so all printed timings are one run's."""
    import torch

    import vtr

    best, best_stats = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, best_stats = seconds, model.vtr.stats if vtr.is_patched(model) else None
    return output, best, best_stats


def trained_setup(path: Path):
    """The trained checkpoint, one held-out scene and one question of each type about it (with true answers)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vtr.shapes import QUESTION_TYPES, candidates, render_pil
    from vtr.shapes import test_set as held_out_set

    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    scene = held_out_set()[SCENE_INDEX].scene
    qa = [pool[0] for t in QUESTION_TYPES if (pool := candidates(scene, t))]
    return model, processor, render_pil(scene), qa


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtr.demo", description=__doc__.splitlines()[0])
    parser.error = lambda message: parser.exit(2, f"vtr demo: error: {message}\n")  # one line, no usage block
    parser.add_argument("--out", default="out", help="folder for the overlay PNGs (default out/)")
    parser.add_argument("--random", action="store_true", help="use the random-weight tiny model and a photo")
    parser.add_argument("--model", default=None, help="trained checkpoint folder (default: the one shipped in vtr.shapes)")
    args = parser.parse_args(argv)
    if args.model is not None and not (Path(args.model) / "config.json").exists():
        parser.exit(2, f"vtr demo: error: --model {args.model!r} is not a checkpoint folder (no config.json in it)\n")
    args.model = args.model or str(MODEL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from PIL import Image

    import vtr
    from vtr.media.overlay import denormalize, overlay, side_by_side
    from vtr.testing import chat_prompt, tiny_model

    trained = not args.random and (Path(args.model) / "config.json").exists()
    if trained:
        model, processor, image, qa = trained_setup(Path(args.model))
        questions, truths = [q for q, _ in qa], [a for _, a in qa]
        max_new, scale = 1, 4  # single-word answers: the first token is the answer
        print(f"vtr demo: tiny LLaVA trained on procedural shapes ({Path(args.model).name}, 144 visual tokens)")
        print("          + a held-out scene from vtr/shapes; answers marked against the scene's truth")
        record = Path(args.model) / "eval.json"
        if record.exists():
            import json

            ev = json.loads(record.read_text())
            print(f"          (held-out accuracy unpruned {ev['unpruned']['overall']:.3f}, majority answer "
                  f"{ev['majority']['overall']['accuracy']:.3f}: see its MODEL_CARD.md)")
        print()
    else:
        model, processor = tiny_model("llava")
        image, questions, truths, max_new, scale = astronaut(), [QUESTION], None, MAX_NEW_TOKENS, 2
        print("vtr demo: tiny LLaVA-1.5-shaped model + scikit-image 'astronaut' photo")
        print("NOTE: the model has RANDOM weights, so its answers are gibberish (run without --random for the")
        print("      trained checkpoint). Token counts, selections, timings and FLOPs are real.\n")
    image_processor = processor.image_processor
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=[image] * len(questions), text=[chat_prompt(q, processor.image_token) for q in questions],
                       return_tensors="pt", padding=True)
    prompt_length = inputs["input_ids"].shape[1]

    def answers(output) -> str:
        words = [a.strip() for a in processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)]
        if truths is None:
            return repr(words[0])
        return " | ".join(f"{w or '∅'} {'✓' if w == t else '✗'}" for w, t in zip(words, truths))

    timed_generate(model, inputs, repeats=1, max_new_tokens=max_new)  # warm-up: first-call overheads
    baseline, seconds, _ = timed_generate(model, inputs, max_new_tokens=max_new)
    n_visual = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    if truths is None:
        print(f"question: {QUESTION!r}   (generate: best of {REPEATS}, {max_new} new tokens)")
    else:
        print(f"questions (one batch, generate: best of {REPEATS}, greedy):")
        for q, t in zip(questions, truths):
            print(f"  {q:<60} true answer: {t}")
    print(f"unpatched            visual tokens {n_visual:>4}          generate {seconds:.3f} s  answer: {answers(baseline)}")

    view = inputs["pixel_values"][0]  # (3, H, W): what the vision tower saw
    norm = dict(mean=image_processor.image_mean, std=image_processor.image_std,
                rescale_factor=getattr(image_processor, "rescale_factor", 1 / 255))
    source = Image.fromarray(denormalize(view, **norm))
    pictures = [source.resize((source.width * scale, source.height * scale), Image.NEAREST)]
    titles = [f"model input ({source.width} px)"]
    for keep in KEEPS:
        with vtr.patched(model, "fastervlm", keep=keep):
            output, seconds, stats = timed_generate(model, inputs, max_new_tokens=max_new)
        record = stats.views[0]
        print(
            f"fastervlm keep={keep:<5} visual tokens {stats.visual_tokens_in[0]:>4} -> {stats.visual_tokens_out[0]:<4} "
            f"generate {seconds:.3f} s  (vision {stats.seconds['vision']:.3f} s, select {stats.seconds['select'] * 1e3:.1f} ms)"
            f"  prefill FLOPs x{stats.flops_ratio:.3f}  answer: {answers(output)}"
        )
        path = out / f"overlay_fastervlm_keep{keep}.png"
        pictures.append(overlay(view, record.grid, record.kept, path, outline=(255, 220, 0), scale=scale, **norm))
        titles.append(f"fastervlm keep={keep}: {record.kept.numel()}/{record.grid[0] * record.grid[1]} patches")

    restored, _, _ = timed_generate(model, inputs, repeats=1, max_new_tokens=max_new)
    same = torch.equal(restored, baseline)
    print(f"after unpatch: output {'identical to' if same else 'DIFFERENT from'} the unpatched run")

    side_by_side(pictures, titles, out / "overlays.png")
    print(f"\noverlays written to {out}/: " + ", ".join(p.name for p in sorted(out.glob("overlay*.png"))))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
