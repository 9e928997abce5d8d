"""Serving reduced visual tokens with an engine that takes image embeddings (vLLM).

    import vtr, vtr.serving
    vtr.patch(model, "fastervlm", keep=58, positions="renumber")  # renumber: what vLLM does
    prompts = vtr.serving.export(model, processor(images=..., text=..., return_tensors="pt", padding=True))
    for group in vtr.serving.group_by_rows(prompts):             # one row count per engine call
        outputs = llm.generate([vtr.serving.offline_prompt(prompts[i]) for i in group], sampling)

vLLM is never imported by vtr; it runs in its own environment (``make test-vllm``).
"""
from vtr.serving.export import EXPORT_FAMILIES, REFUSED_FAMILIES, ReducedPrompt, check_exportable, export
from vtr.serving.vllm_inputs import (group_by_rows, image_embeds, offline_prompt, openai_content, tensor_from_base64,
                                     tensor_to_base64)

__all__ = ["export", "ReducedPrompt", "check_exportable", "EXPORT_FAMILIES", "REFUSED_FAMILIES", "offline_prompt",
           "image_embeds", "openai_content", "tensor_to_base64", "tensor_from_base64", "group_by_rows"]
