"""Prefill latency of ``vtr``'s FasterVLM on a LLaVA-1.5-shaped model, against two references.

``python -m benchmarks.efficiency`` times one prefill (``model(**inputs, logits_to_keep=1)``, from
``pixel_values`` to last-position logits, vision tower included) of four variants:

(a) ``unpatched``: the stock model with all 576 visual tokens;
(b) ``fastervlm``: the same model after ``vtr.patch(model, "fastervlm", keep=k)``;
(c) ``oracle``: the stock model fed only the tokens (b) kept, with the indices known in advance:
    vision tower + projector, a gather, the shrunk prompt, the LLM. Any pre-LLM reducer pays at
    least this, so (b)/(c) is vtr's overhead (q/k probe, scoring, splice, wrappers);
(d) ``reference``: FasterVLM scored the way its original code does it — the vision tower run with
    eager attention and ``output_attentions=True``, ``attentions[-2][:, :, 0, 1:].mean(1)``, top-k,
    a boolean mask over the projected features — then the LLM as in (c). (d)/(b) is what
    computing the [CLS] row from q/k (and keeping SDPA on) saves.

An untimed check first runs each keep once: (d)'s kept indices must equal (b)'s and (c)'s logits
(b)'s, so the timed variants compute the same thing. Then variants are interleaved in rounds, and
calls during which other processes competed for the CPU are discarded and made up for (see
:func:`benchmarks.report.time_rounds`). Writes ``benchmarks/results/efficiency.json`` and the
``efficiency`` section of ``BENCHMARKS.md``.

From Python, :func:`measure` runs the same benchmark and returns the result without writing anything
(``notebooks/measure_on_your_hardware.ipynb`` plots it).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vtr
from benchmarks.report import (machine_info, machine_line, markdown_table, paired_median, time_rounds)
from benchmarks.timing_args import (TimingDefaults, command_line, parse_timing_args, publish, timing_parser,
                                    timing_setup)
from vtr.testing import chat_prompt, tiny_model

SECTION = "efficiency"
KEEPS = (0.5, 0.25, 0.1)
QUESTION = "describe the picture in detail please"
#: LLaVA-1.5 geometry (336 px, patch 14 → 24×24 = 576 patches + [CLS]); widths scaled down so one
#: unpatched prefill takes ~1 s on 2 CPU cores, with the vision tower a small share of the compute
#: as in LLaVA-1.5-7B (CLIP ViT-L/14 ≈ 4-5 % of the prefill FLOPs of Vicuna-7B on ~640 tokens).
FULL = dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                        image_size=336, patch_size=14, projection_dim=256),
            text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=8))
#: a smoke-test model: same code paths, 8×8 = 64 patches, milliseconds per call
QUICK = dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                         image_size=112, patch_size=14, projection_dim=32),
             text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2))
LABELS = {"vision": "vision tower + projector only", "unpatched": "(a) unpatched", "fastervlm": "(b) vtr fastervlm",
          "oracle": "(c) oracle: kept tokens only", "reference": "(d) reference FasterVLM scoring"}


@dataclass
class Bench:
    """The model under test and its fixed inputs (batch 1)."""

    model: torch.nn.Module
    inputs: dict  # input_ids/attention_mask (1, N), pixel_values (1, 3, S, S)
    eager_tower: torch.nn.Module  # a copy of the vision tower with eager attention, for (d)
    feature_layer: int  # vision_feature_layer, negative (-2)
    image_token_id: int


@dataclass
class Variant:
    name: str
    keep: float | None
    run: Callable[[], object]  # one prefill; returns the model output
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @property
    def label(self) -> str:
        return self.name if self.keep is None else f"{self.name}@{self.keep}"


def build(config: dict, seed: int) -> Bench:
    """Random-init LLaVA-1.5-shaped model, its real processor, and the astronaut photo + prompt."""
    import skimage.data
    from PIL import Image

    model, processor = tiny_model("llava", seed=seed, vision=dict(config["vision"]), text=dict(config["text"]))
    image = Image.fromarray(skimage.data.astronaut())  # 512×512 RGB, public domain
    inputs = dict(processor(images=image, text=chat_prompt(QUESTION), return_tensors="pt"))
    layer = model.config.vision_feature_layer
    if not (isinstance(layer, int) and layer < 0 and model.config.vision_feature_select_strategy == "default"):
        raise ValueError("the reference scoring (d) follows LLaVA-1.5: one negative feature layer, 'default' strategy")
    # A separate eager copy: (a)-(c) keep SDPA in the shared tower; the weights are identical.
    eager_tower = copy.deepcopy(model.model.vision_tower)
    eager_tower.set_attn_implementation("eager")
    return Bench(model, inputs, eager_tower, layer, model.config.image_token_id)


def reduced_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                   kept: torch.Tensor) -> dict:
    """Shrink the placeholder run to the kept patches; positions stay the original ones.

    Args:
        input_ids, attention_mask: ``(1, N)`` with one run of ``n`` placeholders.
        kept: ``(k,)`` sorted patch indices in ``[0, n)`` ("default" strategy: patch = token).
    Returns:
        ``input_ids``, ``attention_mask``, ``position_ids`` of shape ``(1, N - n + k)``; the
        positions are ``arange(N)`` at the surviving columns, as vtr's ``positions="original"``.
    """
    is_image = input_ids[0] == image_token_id
    survives = ~is_image
    survives[is_image.nonzero().squeeze(1)[kept]] = True
    columns = survives.nonzero().squeeze(1)
    return dict(input_ids=input_ids[:, columns], attention_mask=attention_mask[:, columns],
                position_ids=columns.unsqueeze(0))


def oracle_prefill(b: Bench, kept: torch.Tensor):
    """(c): stock vision tower + projector, gather the known ``(k,)`` indices, LLM on the kept tokens."""
    image = b.model.model.get_image_features(pixel_values=b.inputs["pixel_values"], return_dict=True)
    image.pooler_output = [image.pooler_output[0].index_select(0, kept)]  # (576, D) → (k, D)
    prompt = reduced_prompt(b.inputs["input_ids"], b.inputs["attention_mask"], b.image_token_id, kept)
    return b.model(**prompt, mm_encoder_outputs={"image": image}, logits_to_keep=1)


def reference_prefill(b: Bench, k: int):
    """(d): FasterVLM's own scoring (eager tower, ``output_attentions``), then the LLM as in (c).

    Returns ``(output, kept)`` with ``kept`` the ``(k,)`` sorted patch indices it chose.
    """
    out = b.eager_tower(b.inputs["pixel_values"], output_attentions=True, output_hidden_states=True, return_dict=True)
    # attentions[L] belongs to the layer whose output is hidden_states[L] for negative L
    scores = out.attentions[b.feature_layer][:, :, 0, 1:].mean(dim=1)  # (1, H, 577, 577) → (1, 576)
    top = scores.topk(k, dim=1).indices  # (1, k), by score
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)  # (1, 576), raster order
    features = b.model.model.multi_modal_projector(out.hidden_states[b.feature_layer][:, 1:])  # (1, 576, D)
    image = BaseModelOutputWithPooling(pooler_output=[features[0][mask[0]]])  # (k, D)
    kept = mask[0].nonzero().squeeze(1)
    prompt = reduced_prompt(b.inputs["input_ids"], b.inputs["attention_mask"], b.image_token_id, kept)
    return b.model(**prompt, mm_encoder_outputs={"image": image}, logits_to_keep=1), kept


def cache_mib(output) -> float:
    """MiB held by the KV cache a prefill returned (keys + values of every layer)."""
    total = 0
    for layer in getattr(output.cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total / 2**20


def check(b: Bench, keeps: tuple[float, ...]) -> tuple[dict, dict]:
    """One untimed run per keep: kept indices, stats, and that (c)/(d) compute what (b) does.

    Returns ``(per_keep, unpatched)``; ``per_keep[keep]`` holds the kept indices of (b) and (d),
    visual tokens, prompt lengths, the FLOPs ratio, KV cache sizes and max |Δlogits| vs (b).
    """
    model, inputs = b.model, b.inputs
    base = model(**inputs, logits_to_keep=1)
    unpatched = dict(visual_tokens=int((inputs["input_ids"] == b.image_token_id).sum()),
                     prompt_tokens=int(inputs["input_ids"].shape[1]), kv_cache_mib=cache_mib(base))
    # Memory the two scorings hold: (d) every layer's attention maps, vtr's probe q and k of one layer.
    tower = b.eager_tower(inputs["pixel_values"], output_attentions=True, return_dict=True)
    unpatched["reference_attention_maps_mib"] = sum(a.numel() * a.element_size() for a in tower.attentions) / 2**20
    hidden = tower.last_hidden_state  # (1, 577, D)
    unpatched["vtr_probe_mib"] = 2 * hidden.numel() * hidden.element_size() / 2**20
    per_keep = {}
    for keep in keeps:
        with vtr.patched(model, "fastervlm", keep=keep):
            patched = model(**inputs, logits_to_keep=1)
            stats = model.vtr.stats
        kept = stats.views[0].kept.long()
        prompt = reduced_prompt(inputs["input_ids"], inputs["attention_mask"], b.image_token_id, kept)
        if not torch.equal(prompt["position_ids"][0], stats.kept_columns[0]):
            raise AssertionError(f"keep={keep}: oracle columns differ from the patched model's kept_columns")
        oracle = oracle_prefill(b, kept)
        reference, ref_kept = reference_prefill(b, round(unpatched["visual_tokens"] * keep))
        if not torch.equal(ref_kept, kept):
            raise AssertionError(f"keep={keep}: reference FasterVLM kept {ref_kept.tolist()}, vtr kept {kept.tolist()}")
        per_keep[keep] = dict(
            kept=kept.tolist(), reference_kept=ref_kept.tolist(), indices_equal=True,
            visual_tokens=int(stats.visual_tokens_out[0]), prompt_tokens=int(prompt["input_ids"].shape[1]),
            flops_ratio=stats.flops_ratio, flops_before=stats.prefill_flops_before,
            flops_after=stats.prefill_flops_after, kv_cache_mib=cache_mib(patched),
            oracle_max_abs_logit_diff=float((oracle.logits - patched.logits).abs().max()),
            reference_max_abs_logit_diff=float((reference.logits - patched.logits).abs().max()),
        )
    return per_keep, unpatched


def variants(b: Bench, per_keep: dict) -> list[Variant]:
    """The timed calls; (c) gets its indices from the check run, so selection is not timed."""
    out = [Variant("unpatched", None, lambda: b.model(**b.inputs, logits_to_keep=1))]
    for keep, info in per_keep.items():
        kept, k = torch.tensor(info["kept"]), len(info["kept"])
        out += [
            # patch/unpatch happen outside the timer; the patched call itself is timed
            Variant("fastervlm", keep, lambda: b.model(**b.inputs, logits_to_keep=1),
                    lambda keep=keep: vtr.patched(b.model, "fastervlm", keep=keep)),
            Variant("oracle", keep, lambda kept=kept: oracle_prefill(b, kept)),
            Variant("reference", keep, lambda k=k: reference_prefill(b, k)),
        ]
    return out


def summarise(vs: list[Variant], timing: dict, max_foreign: float, per_keep: dict, unpatched: dict) -> dict:
    """Min/median over each variant's clean samples, and ratios of variants measured in the same run.

    Falls back to all samples (``contended: true``) for a variant with no clean sample.
    """
    def is_clean(f):
        return f is None or f <= max_foreign

    clean = {(v.name, v.keep): [is_clean(f) for f in fs] for v, fs in zip(vs, timing["foreign"])}
    raw = {(v.name, v.keep): t for v, t in zip(vs, timing["seconds"])}

    def samples(key):
        kept = [t for t, c in zip(raw[key], clean[key]) if c]
        return kept or raw[key]

    def paired(a, b):  # rounds where both calls were clean; all rounds when there is none
        both = [(x, y) for x, y, ca, cb in zip(raw[a], raw[b], clean[a], clean[b]) if ca and cb]
        return paired_median(*zip(*both)) if both else paired_median(raw[a], raw[b])

    def ratio(a, b):
        return dict(min=min(samples(a)) / min(samples(b)), paired=paired(a, b))

    base = ("unpatched", None)
    rows = []
    for v, fs in zip(vs, timing["foreign"]):
        key, info = (v.name, v.keep), unpatched if v.keep is None else per_keep[v.keep]
        t = samples(key)
        speedup = ratio(base, key)
        rows.append(dict(
            variant=v.name, label=LABELS.get(v.name, v.name), keep=v.keep, visual_tokens=info["visual_tokens"],
            prompt_tokens=info["prompt_tokens"], min_s=min(t), median_s=statistics.median(t),
            n_clean=sum(clean[key]), contended=not any(clean[key]), times_s=raw[key], foreign_cores=fs,
            speedup_min=speedup["min"], speedup_paired=speedup["paired"], flops_ratio=info.get("flops_ratio", 1.0),
            kv_cache_mib=info.get("kv_cache_mib") if v.name not in ("oracle", "vision") else None,
        ))
        if v.name == "unpatched":
            rows[-1].update({k: info[k] for k in ("reference_attention_maps_mib", "vtr_probe_mib")})
    ratios = {}
    for keep in per_keep:
        ours, oracle, ref = ("fastervlm", keep), ("oracle", keep), ("reference", keep)
        ratios[str(keep)] = dict(patched_over_oracle=ratio(ours, oracle), reference_over_patched=ratio(ref, ours),
                                 unpatched_over_patched=ratio(base, ours), flops_ratio=per_keep[keep]["flops_ratio"])
    return dict(rows=rows, ratios=ratios)


def markdown(result: dict) -> str:
    """The ``efficiency`` section of BENCHMARKS.md: setup, table, checks, machine."""
    s, summary, timing = result["setup"], result["summary"], result["timing"]
    v, t = s["vision"], s["text"]
    rows = {(r["variant"], r["keep"]): r for r in summary["rows"]}
    vision, base = rows[("vision", None)], rows[("unpatched", None)]
    header = ["variant", "keep", "visual tokens", "min s", "median s", "n", "speed-up vs (a)", "(b)/(c)", "(d)/(b)",
              "FLOPs ratio", "KV cache MiB"]
    table = []
    for row in summary["rows"]:
        r = summary["ratios"].get(str(row["keep"]), {}) if row["variant"] == "fastervlm" else {}
        pair = lambda key: f"{r[key]['min']:.3f} ({r[key]['paired']:.3f})" if r else "—"  # noqa: E731
        is_vision = row["variant"] == "vision"
        table.append([
            row["label"], "—" if row["keep"] is None else row["keep"], "—" if is_vision else row["visual_tokens"],
            f"{row['min_s']:.3f}", f"{row['median_s']:.3f}", row["n_clean"] if not row["contended"] else "0 (!)",
            "—" if is_vision else f"{row['speedup_min']:.2f}× ({row['speedup_paired']:.2f}×)",
            pair("patched_over_oracle"), pair("reference_over_patched"),
            "—" if is_vision else f"{row['flops_ratio']:.3f}",
            "—" if row["kv_cache_mib"] is None or is_vision else f"{row['kv_cache_mib']:.2f}",
        ])
    equal = all(c["indices_equal"] for c in result["checks"].values())
    diffs = max(c["oracle_max_abs_logit_diff"] for c in result["checks"].values())
    command = "python -m benchmarks.efficiency" + " --quick" * s["quick"]
    spread = [r["median_s"] / r["min_s"] - 1 for r in summary["rows"]]
    spread = min(spread), max(spread)
    n_calls = timing["rounds"] * len(summary["rows"])
    n_dropped = n_calls - sum(r["n_clean"] for r in summary["rows"])
    warning = (" **Not enough quiet time: some variants have fewer clean samples than asked; treat the "
               "figures as rough.**" if timing["budget_hit"] else "")
    paragraphs = [
        f"## Efficiency: prefill latency of FasterVLM (`{command}`)",
        f"Model: random-init `LlavaForConditionalGeneration` with LLaVA-1.5 geometry: CLIP vision tower at "
        f"{v['image_size']} px, patch {v['patch_size']} ({v['hidden_size']} wide, {v['num_hidden_layers']} layers), "
        f"features of layer {s['vision_feature_layer']} with the \"default\" strategy, so {s['visual_tokens']} visual "
        f"tokens; 2-layer MLP projector; Llama LLM ({t['hidden_size']} wide, {t['num_hidden_layers']} layers, "
        f"{t['num_attention_heads']} heads / {t['num_key_value_heads']} KV heads, MLP {t['intermediate_size']}). "
        f"Input: `skimage.data.astronaut()` and \"{QUESTION}\", a {s['prompt_tokens']}-token prompt "
        f"({s['visual_tokens']} visual). Vision tower + projector take {vision['min_s'] * 1e3:.0f} ms (min), "
        f"{vision['min_s'] / base['min_s']:.0%} of an unpatched prefill (LLaVA-1.5-7B: about 4-5 % of the "
        f"prefill FLOPs).",
        f"Each time is one `model(**inputs, logits_to_keep=1)` prefill, from `pixel_values` to last-position logits, "
        f"batch 1, {s['dtype']}, {s['attention']} attention, `no_grad`, {result['machine']['torch_threads']} threads. "
        f"After {s['warmup']} warm-up rounds, every round runs all variants interleaved in a rotating order. This "
        f"machine is shared: a call during which other processes kept more than {s['max_foreign']} of a core busy "
        f"is discarded, each call first waits for a quiet moment, and rounds continue until every variant has "
        f"{s['repeats']} clean samples; here {timing['rounds']} rounds, {n_dropped} of {n_calls} calls discarded "
        f"(n: clean samples used).{warning} Ratios are of the min times, and in brackets the median of per-round "
        f"ratios over rounds where both calls were clean. Even clean samples spread (medians {spread[0]:.0%} to "
        f"{spread[1]:.0%} above the mins), so ratios within a few percent of 1 are ties. FLOPs ratio: analytic LLM prefill FLOPs after/before "
        f"(`model.vtr.stats.flops_ratio`; the vision tower is not counted). KV cache: measured size of the cache "
        f"the prefill returns. Peak memory is not measured: on CPU there is no cheap per-call peak counter.",
        "- (a) the stock model, all visual tokens; (b) `vtr.patch(model, \"fastervlm\", keep=k)`;\n"
        "- (c) oracle: the stock model given only (b)'s kept tokens, the indices known in advance (vision tower + "
        "projector, gather, shrunk prompt, LLM): the floor for any pre-LLM reducer, so (b)/(c) is vtr's overhead;\n"
        "- (d) FasterVLM scored as its original code does: vision tower with eager attention and "
        f"`output_attentions=True`, `attentions[{s['vision_feature_layer']}][:, :, 0, 1:].mean(1)`, top-k, a mask "
        "over the projected features, then the LLM as in (c); (d)/(b) > 1 means vtr's scoring from q/k is cheaper;\n"
        "- last row: `model.model.get_image_features` alone (vision tower + projector), which every variant pays.",
        markdown_table(header, table),
        f"Checks: (d)'s kept indices equal (b)'s at every keep: {'yes' if equal else 'NO'}; (c)'s logits match "
        f"(b)'s (max |Δ| {diffs:.1e}).",
        f"Memory of the scoring, which the times above do not show: (d)'s `output_attentions` materialises "
        f"{base['reference_attention_maps_mib']:.1f} MiB of attention maps per image here (all {v['num_hidden_layers']} "
        f"tower layers), and forces eager attention on every tower layer; vtr's probe holds the q and k of one "
        f"layer, {base['vtr_probe_mib']:.1f} MiB. For LLaVA-1.5's CLIP ViT-L/14-336 (24 layers, 16 heads, fp16) "
        f"the maps are 24·16·577²·2 B = {24 * 16 * 577 ** 2 * 2 / 2 ** 20:.0f} MiB per image.",
        machine_line(result["machine"]),
    ]
    return "\n\n".join(paragraphs) + "\n"


#: unlike the others, efficiency keeps 2 threads under --quick too
TIMING = TimingDefaults(warmup=2, repeats=7, max_seconds=300.0, threads=2, quick_threads=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = timing_parser("benchmarks.efficiency", __doc__, SECTION, TIMING, keeps=KEEPS)
    return parse_timing_args(p, argv, TIMING)


def run(args: argparse.Namespace, config: dict, argv: list[str] | None = None, log=print) -> dict:
    """Build the model of ``config`` (``FULL``, ``QUICK`` or the same keys), check and time every variant
    with the options in ``args``; returns the result dict (nothing is written)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    keeps = tuple(sorted(set(args.keeps), reverse=True))
    with torch.no_grad():
        b = build(config, args.seed)
        per_keep, unpatched = check(b, keeps)
        vs = variants(b, per_keep)
        # the part every variant pays, timed alongside the others for the vision share
        vs.append(Variant("vision", None, lambda: b.model.model.get_image_features(
            pixel_values=b.inputs["pixel_values"], return_dict=True)))
        timing = time_rounds(vs, args.warmup, args.repeats, args.max_foreign, args.max_seconds, log)
    dtype, attention = str(b.model.dtype).removeprefix("torch."), b.model.config._attn_implementation
    return dict(
        benchmark=SECTION,
        command=command_line("benchmarks.efficiency", argv),
        machine=machine_info(dtype=dtype, attention=attention),
        setup=dict(**timing_setup(args), keeps=list(keeps), vision=config["vision"],
                   text=config["text"], vocab_size=b.model.config.text_config.vocab_size,
                   vision_feature_layer=b.feature_layer, visual_tokens=unpatched["visual_tokens"],
                   prompt_tokens=unpatched["prompt_tokens"], image="skimage.data.astronaut()", question=QUESTION,
                   dtype=dtype, attention=attention),
        timing={k: v for k, v in timing.items() if k not in ("seconds", "foreign")},
        checks={str(k): v for k, v in per_keep.items()},
        summary=summarise(vs, timing, args.max_foreign, per_keep, unpatched),
    )


def measure(keeps=KEEPS, *, quick: bool = False, config: dict | None = None, warmup: int | None = None,
            repeats: int | None = None, max_foreign: float | None = None, max_seconds: float | None = None,
            threads: int | None = None, seed: int = 0, log=None) -> dict:
    """The benchmark as a function call, on this machine: returns the result dict and writes nothing.

    Options are the command line's (``None``: its default, the ``--quick`` one when ``quick``);
    ``config`` replaces the model (``FULL`` / ``QUICK`` dicts of ``vision`` and ``text`` settings; its
    vision tower must keep LLaVA-1.5's layout: a negative feature layer, the "default" strategy).
    ``result["summary"]["rows"]`` holds one row per variant (``variant``, ``keep``, ``min_s``,
    ``median_s``, ``visual_tokens``, ``flops_ratio``, ...), ``result["summary"]["ratios"]`` the paired
    ratios per keep, ``result["checks"]`` the equality checks. ``markdown(result)`` renders it as the
    BENCHMARKS.md section. ``log`` gets progress lines (default: none).
    """
    keeps = tuple(keeps)
    if not keeps or not all(isinstance(k, (int, float)) and not isinstance(k, bool) and 0 < k <= 1 for k in keeps):
        raise ValueError(f"keeps must be ratios in (0, 1], got {keeps!r}")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1), ("threads", threads, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    argv = ["--keeps", *map(str, keeps)] + ["--quick"] * quick
    for flag, value in (("--warmup", warmup), ("--repeats", repeats), ("--max-foreign", max_foreign),
                        ("--max-seconds", max_seconds), ("--threads", threads), ("--seed", seed)):
        if value is not None:
            argv += [flag, str(value)]
    args = parse_args(argv)
    return run(args, config or (QUICK if quick else FULL), argv, log or (lambda *_: None))


def main(argv: list[str] | None = None, log=print) -> dict:
    """Run the benchmark; writes the JSON and the markdown section and returns the result dict."""
    args = parse_args(argv)
    result = run(args, QUICK if args.quick else FULL, argv, log)
    return publish(args, SECTION, result, markdown, log)

if __name__ == "__main__":
    main()
