"""Model adapters, one module per family; installed as ``vtr.adapters``."""
from __future__ import annotations

from vtr.adapters.base import Adapter, Encoded
from vtr.adapters.gemma3 import Gemma3Adapter
from vtr.adapters.llava import LlavaAdapter
from vtr.adapters.llava_next import LlavaNextAdapter
from vtr.adapters.llava_onevision import LlavaOnevisionAdapter
from vtr.adapters.qwen2_vl import Qwen2VLAdapter
from vtr.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from vtr.adapters.qwen3_vl import Qwen3VLAdapter
from vtr.adapters.video_llava import VideoLlavaAdapter

ADAPTERS: list[type[Adapter]] = [LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter,
                                 VideoLlavaAdapter, Gemma3Adapter]


def supported_families() -> dict[str, tuple[str, ...]]:
    return {a.family: a.model_classes for a in ADAPTERS}


def adapter_for(model) -> Adapter:
    """The adapter for ``model``, or a ``ValueError`` naming the supported families."""
    for adapter_class in ADAPTERS:
        if adapter_class.matches(model):
            return adapter_class(model)
    supported = ", ".join(f"{family} ({', '.join(classes)})" for family, classes in supported_families().items())
    raise ValueError(f"unsupported model {type(model).__name__}; vtr supports: {supported}")


__all__ = ["Adapter", "Encoded", "adapter_for", "supported_families", "ADAPTERS"]
