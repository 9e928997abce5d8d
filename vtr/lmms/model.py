"""The lmms-eval model ``vtr``: any transformers VLM vtr supports, patched with a reducer, evaluated by
lmms-eval's own tasks (needs ``pip install 'vtr[lmms]'``).

    lmms-eval eval --model vtr --model_args pretrained=PATH,reducer=fastervlm,keep=0.1[,batch_size=8] --tasks pope

``--model_args``: ``pretrained`` (a model folder or hub id), ``reducer`` (a registered name, or ``none`` for
the unpatched model), ``keep`` and any other setting of that reducer's config; and the model's own
settings: ``batch_size``, ``device``, ``dtype`` (``auto``, ``float32``, ``bfloat16`` …),
``attn_implementation``, ``max_frames_num`` (frames read per video, 8), ``max_new_tokens`` (default when a
task sets none, 128) and ``ll_value`` (what ``loglikelihood`` returns, see :meth:`VTRModel.loglikelihood`).
lmms-eval parses ``keep=1`` as the int 1 (one token; a count, as in vtr) and ``keep=1.0`` as the ratio.
"""
from __future__ import annotations

import json
import time
from typing import Any

import torch

try:
    from lmms_eval.api.instance import GenerationResult, TokenCounts
    from lmms_eval.api.model import lmms
    from lmms_eval.models.model_utils.gen_metrics import log_metrics
    from lmms_eval.utils import simple_parse_args_string
except ImportError as error:  # pragma: no cover - exercised by the wheel smoke test without the extra
    raise ImportError("vtr.lmms needs lmms-eval: pip install 'vtr[lmms]' (lmms-eval==0.7.3)") from error

import vtr
from vtr.lmms.prompts import build_prompt, collect_media
from vtr.lmms.scoring import (SampleRecord, continuation_logprobs, cut_at_stop, sample_records, summarise,
                              unreduced_records)

NO_REDUCER = "none"
LL_VALUES = ("mean_nll", "sum_logprob")
#: gen_kwargs passed on to ``generate``; ``until`` is applied to the text, others are ignored (warned once)
GENERATE_KEYS = ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample",
                 "repetition_penalty", "length_penalty")


class VTRModel(lmms):
    """A vtr-patched transformers VLM as an lmms-eval model (``simple`` interface: text plus visuals).

    Either ``pretrained`` (loaded with ``AutoModelForImageTextToText`` / ``AutoProcessor``) or an already
    loaded ``model`` and ``processor``. The reducer and its settings are validated before anything loads;
    a model passed in is patched here and unpatched again when lmms-eval calls :meth:`clean` at the end
    of a run. Requests run in batches of ``batch_size`` (left padding; vtr's batch-N equals batch-1).
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, reducer: str = NO_REDUCER, batch_size: int | str = 1,
                 device: str | None = None, dtype: str = "auto", attn_implementation: str | None = None,
                 max_frames_num: int = 8, max_new_tokens: int = 128, ll_value: str = "mean_nll",
                 model=None, processor=None, max_batch_size: int | None = None, **reducer_settings: Any) -> None:
        super().__init__()
        self.reducer = str(reducer)
        self.batch_size_per_gpu = positive_int(batch_size, "batch_size")
        self.max_frames_num = positive_int(max_frames_num, "max_frames_num")
        self.default_max_new_tokens = positive_int(max_new_tokens, "max_new_tokens")
        if ll_value not in LL_VALUES:
            raise ValueError(f"ll_value={ll_value!r} is not allowed; allowed: {', '.join(LL_VALUES)}")
        self.ll_value = ll_value
        self.settings = self._checked_settings(reducer_settings)
        if (model is None) == (pretrained is None):
            raise ValueError("pass either pretrained=PATH (a model folder or hub id) or model= and processor=")
        if model is not None and processor is None:
            raise ValueError("model= needs its processor=")

        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is None:
            model, processor = load(pretrained, dtype, attn_implementation)
            model.to(self._device)
        else:
            self._device = next(model.parameters()).device
        self.pretrained = pretrained or getattr(model.config, "_name_or_path", type(model).__name__)
        processor.tokenizer.padding_side = "left"  # the continuation / prompt end every row
        self.processor, self._tokenizer = processor, processor.tokenizer
        self._model = model.eval()
        from vtr.adapters import adapter_for

        self._adapter = adapter_for(model)  # unsupported models fail here, naming the supported families
        if self.reducer != NO_REDUCER:
            if "processor" in self._config_fields() and "processor" not in self.settings:
                self.settings["processor"] = processor  # QuoTA's scorer prompts
            vtr.patch(model, self.reducer, **self.settings)
        self.records: list[SampleRecord] = []
        self.seconds = 0.0
        self.generated_tokens = 0
        self._ignored: set[str] = set()
        self._stoppers: dict[tuple[str, ...], Any] = {}

    # -- lmms-eval plumbing -------------------------------------------------------------------------
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "VTRModel":
        """``--model_args`` win over the CLI's own ``--batch_size`` / ``--device`` (whose defaults are
        always passed: ``batch_size=B`` in ``--model_args`` would otherwise clash with ``--batch_size 1``)."""
        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    def clean(self) -> None:
        """End of a run (lmms-eval calls this after the last request): record the reduction summary in
        the results (``results["throughput"]["avg_vtr_*"]``), unpatch, then free the model as lmms-eval does."""
        summary = self.reduction_summary()
        if self.records:
            extra = {f"vtr_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
            log_metrics(total_elapsed_time=self.seconds, total_gen_tokens=self.generated_tokens,
                        avg_speed=self.generated_tokens / self.seconds if self.seconds else 0.0, additional_metrics=extra)
        model = self.__dict__.get("_model")
        if model is not None and vtr.is_patched(model):
            vtr.unpatch(model)
        super().clean()

    def reduction_summary(self) -> dict:
        """Over every request so far: the reducer, its settings, and the means and ratios of
        :func:`vtr.lmms.scoring.summarise` (visual tokens in / kept, keep ratio, FLOPs ratio)."""
        settings = {k: v for k, v in self.settings.items() if k != "processor"}
        return {"reducer": self.reducer, "settings": settings, **summarise(self.records)}

    # -- requests -----------------------------------------------------------------------------------
    def generate_until(self, requests) -> list:
        """Greedy (``temperature`` 0) or sampled answers, batched per identical ``gen_kwargs``; the text is
        cut at the first of the ``until`` strings, which also stop generation early."""
        out: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            indices.sort(key=lambda i: -len(requests[i].args[0]))  # long prompts first: padding stays small
            for chunk in batches(indices, self.batch_size):
                for i, result in zip(chunk, self._generate([requests[i].args for i in chunk])):
                    out[i] = result
        return out

    def loglikelihood(self, requests) -> list:
        """Per request ``(value, is_greedy)`` for the continuation, from logits of the **reduced** sequence
        at the continuation's text positions (``model.vtr.stats.kept_columns`` maps them back).

        ``value`` is, with ``ll_value=mean_nll`` (default), the mean negative log-likelihood per
        continuation token: what lmms-eval's own llava models return and what its ``multiple_choice``
        scoring takes the *argmin* of. ``ll_value=sum_logprob`` returns the summed log-probability
        (lm-eval-harness' meaning: for tasks that maximise it, and for ``perplexity`` metrics, which
        lmms-eval computes as ``exp(-mean(value))``).
        """
        out: list = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].args[0]))
        for chunk in batches(order, self.batch_size):
            for i, result in zip(chunk, self._loglikelihood([requests[i].args for i in chunk])):
                out[i] = result
        return out

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError("vtr's lmms-eval model answers single-round tasks (generate_until, loglikelihood)")

    # -- one batch ----------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _prepare(self, rows: list[tuple[str, Any]]):
        """Processor inputs for ``rows`` of ``(text, visuals)``: prompts in the model's chat format."""
        media = [collect_media(visuals, self.max_frames_num) for _, visuals in rows]
        texts = [build_prompt(self.processor, question, m.kinds) for (question, _), m in zip(rows, media)]
        return texts, media

    def _encode(self, texts: list[str], media) -> dict:
        images = [im for m in media for im in m.images]
        videos = [v for m in media for v in m.videos]
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
        inputs = self.processor(**kwargs)
        dtype = self.model.dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) if torch.is_tensor(v) else v
                for k, v in inputs.items()}

    def _records(self, inputs: dict) -> list[SampleRecord]:
        """One record per row of the call that just ran."""
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        handle = self.model.__dict__.get("vtr")
        stats = handle.stats if handle is not None else None
        if stats is None or len(stats.visual_tokens_in) != ids.shape[0]:  # unpatched, or a text-only call
            return unreduced_records(ids, mask, self._adapter.placeholder_ids(), self._adapter.text_config)
        lengths = mask.sum(dim=1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
        return sample_records(stats, self._adapter.text_config, lengths)

    def _generate(self, args: list[tuple]) -> list:
        gen_kwargs = dict(args[0][1] or {})  # one group: the same gen_kwargs for every row
        rows = []
        for context, _, doc_to_visual, doc_id, task, split in args:
            rows.append((context, doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual else None))
        texts, media = self._prepare(rows)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        options = self._generate_options(gen_kwargs)
        stop = self._stop_criteria(tuple(until))
        if stop is not None:
            options["stopping_criteria"] = stop
        inputs = self._encode(texts, media)
        start = time.perf_counter()
        with torch.no_grad():
            output = self.model.generate(**inputs, **options)
        seconds = time.perf_counter() - start
        records = self._records(inputs)
        new = output[:, inputs["input_ids"].shape[1]:]
        answers = [cut_at_stop(t, until) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        pad = self.tokenizer.pad_token_id
        counts = [int((row != pad).sum()) if pad is not None else int(row.numel()) for row in new]
        self._account(records, seconds, sum(counts))
        return [GenerationResult(text=a, token_counts=TokenCounts(input_tokens=r.llm_input_tokens, output_tokens=n))
                for a, r, n in zip(answers, records, counts)]

    def _generate_options(self, gen_kwargs: dict) -> dict:
        unknown = sorted(set(gen_kwargs) - set(GENERATE_KEYS) - self._ignored)
        if unknown:
            from loguru import logger

            logger.warning(f"vtr: gen_kwargs {unknown} are not generate() settings vtr passes on; ignored "
                           f"(passed on: {', '.join(GENERATE_KEYS)}, and until)")
            self._ignored.update(unknown)
        options = {k: gen_kwargs[k] for k in GENERATE_KEYS if gen_kwargs.get(k) is not None}
        options.setdefault("max_new_tokens", self.default_max_new_tokens)
        temperature = float(options.pop("temperature", 0.0) or 0.0)
        sample = temperature > 0 and bool(options.pop("do_sample", True))
        options.pop("do_sample", None)
        if sample:
            options.update(do_sample=True, temperature=temperature)
        else:  # greedy: sampling settings would only draw warnings
            options.update(do_sample=False)
            options.pop("top_p", None)
            options.pop("top_k", None)
        options["pad_token_id"] = self.tokenizer.pad_token_id
        return options

    def _stop_criteria(self, until: tuple[str, ...]):
        """transformers' stop-string criteria for ``until`` (generation ends early; the text is cut at the
        stop string either way), or ``None`` where the tokenizer's vocabulary defeats it (word-level
        tokenizers without a byte-level prefix)."""
        if not until:
            return None
        if until not in self._stoppers:
            from transformers import StoppingCriteriaList, StopStringCriteria

            try:
                self._stoppers[until] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, list(until))])
            except (ValueError, KeyError, IndexError):
                self._stoppers[until] = None
        return self._stoppers[until]

    def _loglikelihood(self, args: list[tuple]) -> list:
        rows, continuations = [], []
        for context, target, doc_to_visual, doc_id, task, split in args:
            doc = self._doc(task, split, doc_id)
            continuations.append(target if isinstance(target, str) else target(doc))
            rows.append((context, doc_to_visual(doc) if doc_to_visual else None))
        prompts, media = self._prepare(rows)
        n_cont = [len(self.tokenizer(p + c)["input_ids"]) - len(self.tokenizer(p)["input_ids"])
                  for p, c in zip(prompts, continuations)]
        inputs = self._encode([p + c for p, c in zip(prompts, continuations)], media)
        start = time.perf_counter()
        with torch.no_grad():
            logits = self.model(**inputs).logits
        seconds = time.perf_counter() - start
        records = self._records(inputs)
        handle = self.model.__dict__.get("vtr")
        ids = inputs["input_ids"]
        columns = (handle.stats.kept_columns if handle is not None and handle.stats is not None
                   and handle.stats.kept_columns else [torch.arange(ids.shape[1])] * ids.shape[0])
        scored = continuation_logprobs(logits, ids, columns, n_cont)
        self._account(records, seconds, 0)
        out = []
        for (logp, greedy), r in zip(scored, records):
            value = float(-logp.mean()) if self.ll_value == "mean_nll" else float(logp.sum())
            # wrapped so that lmms-eval keeps the pair (0.7.3 turns a bare tuple into its string)
            out.append(GenerationResult(text=(value if logp.numel() else 0.0, greedy),
                                        token_counts=TokenCounts(input_tokens=r.llm_input_tokens)))
        return out

    def _account(self, records: list[SampleRecord], seconds: float, generated: int) -> None:
        self.records += records
        self.seconds += seconds
        self.generated_tokens += generated

    # -- settings -----------------------------------------------------------------------------------
    def _config_fields(self) -> list[str]:
        from vtr.config import field_names
        from vtr.registry import get_spec

        return field_names(get_spec(self.reducer).config_class)

    def _checked_settings(self, settings: dict) -> dict:
        """The reducer's settings, validated now (before any model loads)."""
        if self.reducer == NO_REDUCER:
            extra = {k: v for k, v in settings.items() if not (k == "keep" and isinstance(v, float) and v == 1.0)}
            if extra:
                raise ValueError(f"reducer=none runs the unpatched model and takes no reducer settings, got "
                                 f"{', '.join(f'{k}={v!r}' for k, v in extra.items())}; pick a reducer: "
                                 f"{', '.join(vtr.list_reducers())}")
            return {}
        from vtr.registry import make_config

        try:
            make_config(self.reducer, dict(settings))
        except (TypeError, ValueError) as error:
            if self.reducer not in vtr.list_reducers():
                raise ValueError(f"reducer={self.reducer!r} is unknown; available: none, "
                                 f"{', '.join(vtr.list_reducers())}") from None
            raise type(error)(f"reducer={self.reducer}: {error}") from None
        return dict(settings)


def load(pretrained: str, dtype: str = "auto", attn_implementation: str | None = None):
    """``(model, processor)`` from a model folder or hub id with the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, str(dtype))}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(pretrained, **kwargs)
    return model.eval(), AutoProcessor.from_pretrained(pretrained)


def positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return number


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
