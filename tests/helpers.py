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
