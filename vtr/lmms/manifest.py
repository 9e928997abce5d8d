"""The entry point lmms-eval 0.7 loads from the ``lmms_eval.models`` group (see pyproject.toml): it
registers the model id ``vtr`` with its class path; the class itself is imported only when used."""
from __future__ import annotations

MODEL_ID = "vtr"
CLASS_PATH = "vtr.lmms.model.VTRModel"


def manifests():
    """``[ModelManifest("vtr", simple_class_path="vtr.lmms.model.VTRModel")]`` for ``ModelRegistryV2``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
