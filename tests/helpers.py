"""Small calls the property tests share."""
import torch

#: config ids that random weights must not generate: a recompute would read them as visual placeholders
SPECIAL_CONFIG_IDS = ("image_token_id", "video_token_id", "image_token_index", "video_token_index",
                      "vision_start_token_id", "vision_end_token_id")


def special_ids(model) -> list[int]:
    config = model.config
    return sorted({getattr(config, n) for n in SPECIAL_CONFIG_IDS if getattr(config, n, None) is not None})


def forward_logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def generate_output(model, inputs, n=4):
    """Greedy ``generate`` with per-step logits, never emitting placeholder ids."""
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, suppress_tokens=special_ids(model))


def generate_steps(model, inputs, n=4):
    """``(sequences (B, T), logits (B, n, V))`` of a greedy generate."""
    out = generate_output(model, inputs, n)
    return out.sequences, torch.stack(out.logits, dim=1)


def budget(keep, n):
    """FasterVLM's count for a ratio (rounded half up, at least 1, at most ``n``), written out independently of
    ``vtr.ops.selection``."""
    return max(1, min(n, int(keep * n + 0.5)))


def check_implementation_and_dtype(family, kind, implementation, dtype, reducer="fastervlm"):
    """A fresh tiny ``family`` model in ``implementation`` attention and ``dtype``: keep=1.0 equals the unpatched
    logits bitwise, a ``reducer`` keep=0.25 generate runs and returns the prompt plus 3 tokens, and after unpatching
    the logits are the unpatched ones again. Returns ``(model, stats of the reduced generate)`` for the family's
    own further checks."""
    import vtr
    from vtr.testing import example_inputs, tiny_model

    model, processor = tiny_model(family, attn_implementation=implementation)
    model.to(dtype)
    inputs = example_inputs(processor, family, kind, batch=2, seed=1)
    for key, value in inputs.items():
        if torch.is_floating_point(value):
            inputs[key] = value.to(dtype)
    ref = forward_logits(model, inputs)
    with vtr.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(forward_logits(model, inputs), ref)
    with vtr.patched(model, reducer, keep=0.25):
        seq = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=special_ids(model))
        assert seq.shape[1] == inputs["input_ids"].shape[1] + 3
        stats = model.vtr.stats
    assert torch.equal(forward_logits(model, inputs), ref)
    return model, stats
