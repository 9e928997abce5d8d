"""vtr inside lmms-eval: the model ``vtr`` (:class:`vtr.lmms.model.VTRModel`), registered through the
``lmms_eval.models`` entry point, so an installed ``vtr[lmms]`` needs no edit of lmms-eval.

    lmms-eval eval --model vtr --model_args pretrained=PATH,reducer=fastervlm,keep=0.1 --tasks TASK

    from lmms_eval.evaluator import simple_evaluate
    from vtr.lmms import VTRModel
    results = simple_evaluate(model=VTRModel(pretrained=PATH, reducer="fastervlm", keep=0.1), tasks=[TASK])

``import vtr.lmms`` works without lmms-eval; :class:`VTRModel` needs it (``pip install 'vtr[lmms]'``).
:mod:`vtr.lmms.prompts` (chat-format prompts, task visuals) and :mod:`vtr.lmms.scoring` (log-probs on the
reduced sequence, per-sample records) do not import lmms-eval.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "VTRModel":  # imported on use: lmms-eval is an optional extra
        from vtr.lmms.model import VTRModel

        return VTRModel
    raise AttributeError(f"module 'vtr.lmms' has no attribute {name!r}")


__all__ = ["VTRModel"]
