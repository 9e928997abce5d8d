"""Prefill latency of ``vtr``'s in-LLM reducers (FastV, AIM, ATP-TF) on a LLaVA-1.5-shaped model.

``python -m benchmarks.in_llm`` times one prefill (``model(**inputs, logits_to_keep=1)``, pixels to
last-position logits, vision tower included, SDPA attention) of:

- ``unpatched``: the stock model, every visual token in every decoder layer;
- ``fastv``: ``vtr.patch(model, "fastv", keep=k)`` (K = 2: layers 0-1 see all visual tokens,
  layers >= 2 the kept ones), k = 0.5 and 0.25;
- ``fastv_peer``: FastV scored the way its original code does (pkunlp-icler/FastV, in-place
  variant), on the stock model with no vtr involved: layer K-1's attention runs with transformers'
  ``eager_attention_forward`` (a per-layer config copy, see :class:`FastVPeer`) and returns its
  ``(B, H, N, N)`` probabilities, from which the last token's head-mean row picks the top-k visual
  tokens; hooks then drop the rest from layer K on. (peer)/(vtr) > 1 means vtr's scoring from q/k
  is cheaper;
- ``aim``: ``vtr.patch(model, "aim")``: keep 0.25 as its total budget (mean layer share): merge each image
  to 0.25 / S before the LLM, then PageRank pruning with the linear schedule from 14/28 to 22/28 of the depth
  (S: the share that schedule leaves); ``aim_merge``: ``prune=False`` (merging alone to 0.25);
- ``atp``: ``vtr.patch(model, "atp")`` with its defaults (``budget="sample"``: every row meets keep 0.25);
  ``atp_calibrated``: after ``vtr.calibrate(model, samples)`` (which, for that budget, only reports the share).

Each is reported against its analytic FLOPs ratio (``model.vtr.stats.flops_ratio``), with the
visual tokens every decoder layer processed and the size of the KV cache the prefill returns.

An untimed check first runs each variant once: the peer's kept set must equal vtr's FastV kept
set and its logits vtr's. Then variants are interleaved in rounds and calls disturbed by other
processes are discarded and made up for (:func:`benchmarks.report.time_rounds`). Writes
``benchmarks/results/in_llm.json`` and the ``in_llm`` section of ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass
from itertools import groupby

import torch

import vtr
from benchmarks.efficiency import FULL as EFFICIENCY_FULL, QUESTION, QUICK as EFFICIENCY_QUICK, Variant
from benchmarks.report import (RoundSummary, kv_cache_lengths, kv_cache_mib, machine_info, machine_line,
                               markdown_table, ratio_cell, time_rounds)
from benchmarks.timing_args import (TimingDefaults, command_line, parse_timing_args, publish, timing_parser,
                                    timing_setup)
from vtr.ops.flops import prefill_flops
from vtr.testing import chat_prompt, tiny_model

SECTION = "in_llm"
FASTV_KEEPS = (0.5, 0.25)
FASTV_LAYER = 2
CALIBRATION_TARGET = 0.25
#: photos for ATP calibration (not the timed astronaut): skimage's coffee, chelsea (a cat) and rocket
CALIBRATION_IMAGES = ("coffee", "chelsea", "rocket")
#: LLaVA-1.5 geometry (the efficiency benchmark's vision tower, 576 visual tokens) with a deeper,
#: narrower LLM: 16 layers so that K = 2 and AIM's 8→13 schedule sit where they do on a 7B model,
#: width chosen so an unpatched prefill stays near the efficiency benchmark's (~0.8 s on 2 cores).
FULL = dict(vision=dict(EFFICIENCY_FULL["vision"]),
            text=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12,
                      num_key_value_heads=6))
QUICK = dict(vision=dict(EFFICIENCY_QUICK["vision"]),
             text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2))
LABELS = {"unpatched": "(a) unpatched", "fastv": "vtr fastv", "fastv_peer": "FastV, original scoring (peer)",
          "aim": "vtr aim", "aim_merge": "vtr aim, merge only", "atp": "vtr atp (ATP-TF), default",
          "atp_calibrated": "vtr atp (ATP-TF), calibrated"}


@dataclass
class Bench:
    """The model under test, its processor and the fixed batch-1 input."""

    model: torch.nn.Module
    processor: object
    inputs: dict  # input_ids/attention_mask (1, N), pixel_values (1, 3, S, S)
    image_token_id: int


def build(config: dict, seed: int) -> Bench:
    """Random-init LLaVA-1.5-shaped model and the efficiency benchmark's input (astronaut + question)."""
    import skimage.data
    from PIL import Image

    model, processor = tiny_model("llava", seed=seed, vision=dict(config["vision"]), text=dict(config["text"]))
    image = Image.fromarray(skimage.data.astronaut())  # 512×512 RGB, public domain
    inputs = dict(processor(images=image, text=chat_prompt(QUESTION), return_tensors="pt"))
    return Bench(model, processor, inputs, model.config.image_token_id)


class FastVPeer:
    """FastV as its original code runs it, on the stock model (no vtr): a context manager.

    The reference (pkunlp-icler/FastV, ``LlamaModel.forward`` with ``use_fast_v`` in-place) runs
    layer ``K-1`` with ``output_attentions=True`` (eager attention), takes the head mean of the last
    token's attention row over the image span, keeps its top ``round(keep · n_image)`` image tokens
    plus all text, and from layer ``K`` on runs only those (hidden states gathered, position ids =
    the kept original positions, a causal mask over the kept tokens).

    How that is done on transformers 5.24 without touching the model class:

    - *one eager layer*: every attention module reads ``self.config._attn_implementation`` per call
      and the config is shared by all layers, so layer ``K-1``'s ``self_attn.config`` is replaced
      (on the instance, for the context) by a shallow copy whose implementation is ``"eager"``:
      that layer runs ``eager_attention_forward`` and returns its probabilities, the others keep
      SDPA. Under SDPA the model passes no mask (the kernel's causal flag), so a pre-hook gives that
      layer the additive causal mask eager attention needs;
    - *output_attentions*: 5.24 collects attention weights by reading each attention module's
      returned ``attn_weights``; a forward hook on layer ``K-1``'s attention reads them the same way,
      for that layer only;
    - *pruning*: pre-hooks on layers ``>= K`` gather the hidden states (at ``K``), the RoPE cos/sin
      and position ids at the kept columns and pass no mask (SDPA's causal path is exact for a
      kept subset in original order, batch 1, no padding).

    Batch 1 without padding only (as the reference); prefill only (what is timed).
    """

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, image_token_id: int, keep: float,
                 layer: int = FASTV_LAYER) -> None:
        if input_ids.shape[0] != 1:
            raise ValueError("the FastV peer runs batch 1, as its reference code")
        self.lm = model.model.language_model
        self.layer = layer
        self.attention = self.lm.layers[layer - 1].self_attn
        self.eager_config = copy.copy(self.attention.config)
        self.eager_config._attn_implementation = "eager"
        self.sdpa = self.lm.config._attn_implementation == "sdpa"
        self.image = (input_ids[0] == image_token_id).nonzero().squeeze(1)  # (n_image,) columns of the image run
        self.text = (input_ids[0] != image_token_id).nonzero().squeeze(1)
        self.n_keep = math.floor(keep * len(self.image) + 0.5)  # FastV rounds the kept count the same way
        self.n = input_ids.shape[1]
        self.keep: torch.Tensor | None = None  # (m,) kept columns, set during the prefill
        self._handles: list = []

    def __enter__(self) -> "FastVPeer":
        self._saved = self.attention.__dict__.get("config")
        self.attention.config = self.eager_config
        layers = self.lm.layers
        self._handles = [layers[self.layer - 1].register_forward_pre_hook(self._causal_mask, with_kwargs=True),
                         self.attention.register_forward_hook(self._score)]
        self._handles += [layers[i].register_forward_pre_hook(self._prune(i), with_kwargs=True)
                          for i in range(self.layer, len(layers))]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.attention.config = self._saved

    def _causal_mask(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        n = hidden.shape[1]
        if n != self.n:
            return None  # a decode step
        mask = torch.full((n, n), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device).triu(1)
        kwargs["attention_mask"] = mask[None, None]  # (1, 1, n, n) additive, as eager attention adds it
        return args, kwargs

    def _score(self, module, args, output) -> None:
        weights = output[1]  # (1, H, n, n) post-softmax, what output_attentions returns
        if weights is None or weights.shape[-1] != self.n:
            return
        last = weights.mean(dim=1)[0, -1]  # head mean, the last token's row: (n,)
        top = last[self.image].topk(self.n_keep).indices
        self.keep = torch.cat([self.text, self.image[top]]).sort().values

    def _prune(self, i: int):
        def hook(module, args, kwargs):
            cos, sin = kwargs["position_embeddings"]
            if cos.shape[1] != self.n:
                return None  # a decode step
            keep = self.keep
            hidden = args[0] if args else kwargs["hidden_states"]
            if i == self.layer:
                hidden = hidden[:, keep]
            kwargs["position_embeddings"] = (cos[:, keep], sin[:, keep])
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = kwargs["position_ids"][:, keep]
            m = len(keep)
            kwargs["attention_mask"] = None if self.sdpa else torch.full(
                (m, m), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)[None, None]
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook


def calibration_samples(processor, quick: bool) -> list[dict]:
    """Processor outputs for the calibration photos (random images in quick mode), same question."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from vtr.testing import random_image

    if quick:
        images = [random_image(np.random.default_rng(s)) for s in range(2)]
    else:
        images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in CALIBRATION_IMAGES]
    return [dict(processor(images=image, text=chat_prompt(QUESTION), return_tensors="pt")) for image in images]


def run_length(values: list[int]) -> str:
    """``[576, 576, 288, 288, 288]`` → ``"576×2 · 288×3"``."""
    parts = []
    for value, group in groupby(values):
        n = len(list(group))
        parts.append(f"{value}×{n}" if n > 1 else f"{value}")
    return " · ".join(parts)


def settings_text(name: str, keep, atp_scale: float | None, calibration: dict | None, model) -> str:
    n_layers = model.config.text_config.num_hidden_layers
    if name in ("fastv", "fastv_peer"):
        return f"K={FASTV_LAYER}, keep {keep}"
    if name == "aim":
        from vtr.reducers.aim import AIM, AIMConfig

        start, end = AIM(AIMConfig()).schedule(n_layers)
        return f"merge to {keep}; PageRank prune after layers {start}–{end - 1} (τ 0.1, 5 it.)"
    if name == "aim_merge":
        return f"merge to {keep}, prune=False"
    if name == "atp":
        from vtr.reducers.atp import ATP, ATPConfig

        return f"layers {ATP(ATPConfig()).llm_layers(n_layers)}, masses (0.9, 0.75, 0.6, 0.45), scale 1"
    if name == "atp_calibrated":
        return (f"scale {atp_scale:.3g}, calibrated to {calibration['target']} on {len(calibration['shares'])} "
                f"photos (achieved {calibration['mean']:.3f} ± {calibration['std']:.3f})")
    return "—"


def patched_config(name: str, keep, atp_scale):
    """``(reducer, settings)`` for ``vtr.patched`` of a vtr variant."""
    return {"fastv": ("fastv", dict(keep=keep, layer=FASTV_LAYER)), "aim": ("aim", {}),
            "aim_merge": ("aim", dict(prune=False)), "atp": ("atp", {}),
            "atp_calibrated": ("atp", dict(keep=CALIBRATION_TARGET, scale=atp_scale))}[name]


def check(b, quick: bool, log) -> tuple[dict, dict]:
    """One untimed run of every variant: per-layer counts, FLOPs, KV cache, and peer == vtr FastV.

    Also calibrates ATP-TF. Returns ``(info, calibration)``; ``info[label]`` per variant.
    """
    model, inputs = b.model, b.inputs
    text_config = model.config.text_config
    n_layers = text_config.num_hidden_layers
    info = {}
    base = model(**inputs, logits_to_keep=1)
    n_visual = int((inputs["input_ids"] == b.image_token_id).sum())
    n_prompt = int(inputs["input_ids"].shape[1])
    info["unpatched"] = dict(visual_tokens_per_layer=[n_visual] * n_layers, layer_share=1.0, flops_ratio=1.0,
                             kv_cache_mib=kv_cache_mib(base), kv_cache_lengths=kv_cache_lengths(base),
                             visual_tokens_in=n_visual, prompt_tokens=n_prompt)

    start = time.perf_counter()
    with vtr.patched(model, "atp", keep=CALIBRATION_TARGET):
        samples = calibration_samples(b.processor, quick)
        result = vtr.calibrate(model, samples, max_steps=12 if quick else 24)
    calibration = dict(target=result.target, scale=result.scale, mean=result.mean, std=result.std,
                       shares=result.shares, reached=result.reached, seconds=time.perf_counter() - start,
                       images=["random"] * len(samples) if quick else list(CALIBRATION_IMAGES))
    log(f"ATP-TF calibrated to scale {result.scale:.3g}: mean share {result.mean:.3f} (target {result.target})")

    runs = [("fastv", k) for k in FASTV_KEEPS] + [("aim", 0.25), ("aim_merge", 0.25), ("atp", None),
                                                  ("atp_calibrated", CALIBRATION_TARGET)]
    for name, keep in runs:
        reducer, settings = patched_config(name, keep, result.scale)
        with vtr.patched(model, reducer, **settings):
            out = model(**inputs, logits_to_keep=1)
            stats = model.vtr.stats
        label = name if keep is None else f"{name}@{keep}"
        info[label] = dict(
            visual_tokens_per_layer=list(stats.visual_tokens_per_layer[0]), layer_share=stats.layer_share[0],
            flops_ratio=stats.flops_ratio, flops_before=stats.prefill_flops_before,
            flops_after=stats.prefill_flops_after, kv_cache_mib=kv_cache_mib(out),
            kv_cache_lengths=kv_cache_lengths(out),
            visual_tokens_in=int(stats.visual_tokens_in[0]), stages=stats.stages, prompt_tokens=n_prompt,
            llm_visual_tokens_in=int(stats.visual_tokens_per_layer[0][0]),
        )
        if name == "fastv":
            peer = FastVPeer(model, inputs["input_ids"], b.image_token_id, keep)
            with peer:
                peer_out = model(**inputs, logits_to_keep=1)
            vtr_kept = stats.llm_columns[FASTV_LAYER][0]
            if not torch.equal(peer.keep, vtr_kept):
                raise AssertionError(f"keep={keep}: the FastV peer kept other tokens than vtr's fastv")
            tokens = [n_prompt] * FASTV_LAYER + [len(peer.keep)] * (n_layers - FASTV_LAYER)
            n_kept_visual = len(peer.keep) - len(peer.text)
            info[f"fastv_peer@{keep}"] = dict(
                visual_tokens_per_layer=[n_visual] * FASTV_LAYER + [n_kept_visual] * (n_layers - FASTV_LAYER),
                layer_share=(FASTV_LAYER * n_visual + (n_layers - FASTV_LAYER) * n_kept_visual) / (n_layers * n_visual),
                flops_ratio=prefill_flops(text_config, tokens) / prefill_flops(text_config, [n_prompt] * n_layers),
                kv_cache_mib=kv_cache_mib(peer_out), kv_cache_lengths=kv_cache_lengths(peer_out),
                visual_tokens_in=n_visual, prompt_tokens=n_prompt, kept_equal_vtr=True,
                max_abs_logit_diff_vs_vtr=float((peer_out.logits - out.logits).abs().max()),
            )
            info[label]["kept_columns"] = vtr_kept.tolist()
    return info, calibration


def variants(b, atp_scale: float) -> list[Variant]:
    """The timed calls, interleaved per round: patching and hooks happen outside the timer."""
    model, inputs = b.model, b.inputs

    def call():
        return model(**inputs, logits_to_keep=1)

    def patched(name, keep):
        reducer, settings = patched_config(name, keep, atp_scale)
        return lambda: vtr.patched(model, reducer, **settings)

    out = [Variant("unpatched", None, call)]
    for keep in FASTV_KEEPS:
        out += [Variant("fastv", keep, call, patched("fastv", keep)),
                Variant("fastv_peer", keep, call,
                        lambda keep=keep: FastVPeer(model, inputs["input_ids"], b.image_token_id, keep))]
    out += [Variant("aim", 0.25, call, patched("aim", 0.25)),
            Variant("aim_merge", 0.25, call, patched("aim_merge", 0.25)),
            Variant("atp", None, call, patched("atp", None)),
            Variant("atp_calibrated", CALIBRATION_TARGET, call, patched("atp_calibrated", CALIBRATION_TARGET))]
    return out


def summarise(vs: list[Variant], timing: dict, max_foreign: float, info: dict) -> dict:
    s = RoundSummary([v.label for v in vs], timing, max_foreign)
    rows = []
    for v in vs:
        row = dict(variant=v.name, label=LABELS[v.name], keep=v.keep, **info[v.label], **s.row(v.label),
                   speedup=s.ratio("unpatched", v.label), time_ratio=s.ratio(v.label, "unpatched"))
        if v.name == "fastv":
            row["peer_over_vtr"] = s.ratio(f"fastv_peer@{v.keep}", v.label)
        rows.append(row)
    dropped, calls = s.dropped()
    return dict(rows=rows, dropped=dropped, calls=calls, spread=list(s.spread()))


def markdown(result: dict) -> str:
    s, summary, timing, cal = result["setup"], result["summary"], result["timing"], result["calibration"]
    v, t = s["vision"], s["text"]
    header = ["variant", "settings", "visual tokens per decoder layer", "mean share", "min s", "median s", "n",
              "speed-up vs (a)", "time ratio", "FLOPs ratio", "(peer)/(vtr)", "KV cache MiB"]
    table = []
    for row in summary["rows"]:
        table.append([
            row["label"], row["settings"], run_length(row["visual_tokens_per_layer"]), f"{row['layer_share']:.3f}",
            f"{row['min_s']:.3f}", f"{row['median_s']:.3f}", row["n_clean"] if not row["contended"] else "0 (!)",
            ratio_cell(row["speedup"], 2, "×"), f"{row['time_ratio']['min']:.3f}", f"{row['flops_ratio']:.3f}",
            ratio_cell(row.get("peer_over_vtr")), f"{row['kv_cache_mib']:.2f}",
        ])
    peers = [r for r in summary["rows"] if r["variant"] == "fastv_peer"]
    diff = max(r["max_abs_logit_diff_vs_vtr"] for r in peers)
    command = "python -m benchmarks.in_llm" + " --quick" * s["quick"]
    n_calls, n_dropped = summary["calls"], summary["dropped"]
    spread = summary["spread"]
    warning = (" **Not enough quiet time: some variants have fewer clean samples than asked; treat the figures as "
               "rough.**" if timing["budget_hit"] else "")
    paragraphs = [
        f"## Pruning inside the LLM: FastV, AIM, ATP-TF (`{command}`)",
        f"Model: random-init `LlavaForConditionalGeneration` with LLaVA-1.5 geometry: the efficiency benchmark's CLIP "
        f"tower ({v['image_size']} px, patch {v['patch_size']}, {v['hidden_size']} wide, {v['num_hidden_layers']} "
        f"layers; {s['visual_tokens']} visual tokens) and a deeper, narrower Llama LLM ({t['hidden_size']} wide, "
        f"{t['num_hidden_layers']} layers, {t['num_attention_heads']} heads / {t['num_key_value_heads']} KV heads, "
        f"MLP {t['intermediate_size']}), so that pruning after layer 2 (FastV) and AIM's schedule (14/28 → 22/28 of "
        f"the depth) fall where they do on a 7B model. Input: `skimage.data.astronaut()` and \"{s['question']}\", a "
        f"{s['prompt_tokens']}-token prompt.",
        f"Each time is one `model(**inputs, logits_to_keep=1)` prefill from pixels to last-position logits (vision "
        f"tower included, which every variant pays), batch 1, {s['dtype']}, {s['attention']} attention, `no_grad`, "
        f"{result['machine']['torch_threads']} threads. After {s['warmup']} warm-up rounds every round runs all "
        f"variants interleaved in a rotating order; calls during which other processes kept more than "
        f"{s['max_foreign']} of a core busy are discarded until every variant has {s['repeats']} clean samples "
        f"(here {timing['rounds']} rounds, {n_dropped} of {n_calls} calls discarded; n: clean samples used).{warning} "
        f"Speed-ups are ratios of the min times, in brackets the median of per-round ratios over rounds where both "
        f"calls were clean; clean samples spread (medians {spread[0]:.0%} to {spread[1]:.0%} above the mins), so "
        f"ratios within a few percent of 1 are ties. Time ratio: min time / (a)'s, to set against the FLOPs ratio "
        f"(analytic LLM prefill FLOPs after/before from `model.vtr.stats.flops_ratio`, from the tokens each layer "
        f"processed; it leaves out the vision tower and the scoring). Visual tokens per decoder layer: "
        f"`stats.visual_tokens_per_layer`, `a×n` = a tokens in n consecutive layers; mean share: their mean / "
        f"{s['visual_tokens']}. KV cache: measured size of the cache the prefill returns (layers after a pruning "
        f"step hold only the kept entries).",
        "- FastV (peer): FastV scored the way its original code does, on the stock model without vtr: layer K−1 "
        "runs transformers' `eager_attention_forward` and returns its full attention probabilities (that layer's "
        "`self_attn.config` is swapped, on the instance, for a copy with `_attn_implementation=\"eager\"`, plus the "
        "additive causal mask eager attention needs; the other layers stay on SDPA), a forward hook reads the "
        "weights as 5.24's `output_attentions` does, the last token's head-mean row picks the top-k image tokens, "
        "and pre-hooks drop the rest from layer K on (hidden states, RoPE cos/sin, position ids). (peer)/(vtr) > 1 "
        "means vtr's scoring (the row recomputed from layer K−1's q/k, SDPA kept) is cheaper.",
        f"- ATP-TF is a training-free adaptation of ATP-LLaVA (its learned thresholds are not public), not the "
        f"paper's method. \"Calibrated\": `vtr.calibrate(model, samples)` with `keep={cal['target']}` on "
        f"{len(cal['shares'])} other photos ({', '.join(cal['images'])}) took {cal['seconds']:.0f} s and reached a "
        f"mean share of {cal['mean']:.3f} ± {cal['std']:.3f} there (scale {cal['scale']:.3g}); the timed astronaut "
        f"gets the share in the table.",
        markdown_table(header, table, align="llllrrrrrrrr"),
        f"Checks: the peer's kept set equals vtr's FastV kept set at every keep: "
        f"{'yes' if all(r['kept_equal_vtr'] for r in peers) else 'NO'}; its logits match vtr's (max |Δ| {diff:.1e}; "
        f"layer K−1 runs eager vs SDPA).",
        machine_line(result["machine"]),
    ]
    return "\n\n".join(paragraphs) + "\n"


TIMING = TimingDefaults(warmup=2, repeats=7, max_seconds=300.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_timing_args(timing_parser("benchmarks.in_llm", __doc__, SECTION, TIMING), argv, TIMING)


def main(argv: list[str] | None = None, log=print) -> dict:
    """Run the benchmark; writes the JSON and the markdown section and returns the result dict."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = QUICK if args.quick else FULL
    try:
        with torch.no_grad():
            b = build(config, args.seed)
            info, calibration = check(b, args.quick, log)
            vs = variants(b, calibration["scale"])
            timing = time_rounds(vs, args.warmup, args.repeats, args.max_foreign, args.max_seconds, log)
        machine = machine_info(dtype=str(b.model.dtype).removeprefix("torch."),
                               attention=b.model.config._attn_implementation)
    finally:
        torch.set_num_threads(threads)
    for v in vs:
        info[v.label]["settings"] = settings_text(v.name, v.keep, calibration["scale"], calibration, b.model)
    dtype, attention = str(b.model.dtype).removeprefix("torch."), b.model.config._attn_implementation
    result = dict(
        benchmark=SECTION,
        command=command_line("benchmarks.in_llm", argv),
        machine=machine,
        setup=dict(**timing_setup(args), vision=config["vision"], text=config["text"],
                   fastv_layer=FASTV_LAYER, fastv_keeps=list(FASTV_KEEPS),
                   visual_tokens=info["unpatched"]["visual_tokens_in"],
                   prompt_tokens=info["unpatched"]["prompt_tokens"],
                   image="skimage.data.astronaut()", question=QUESTION, dtype=dtype, attention=attention),
        calibration=calibration,
        timing={k: v for k, v in timing.items() if k not in ("seconds", "foreign")},
        summary=summarise(vs, timing, args.max_foreign, info),
    )
    return publish(args, SECTION, result, markdown, log)


if __name__ == "__main__":
    main()
