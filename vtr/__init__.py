"""vtr: visual token reduction for stock transformers vision-language models.

    import vtr
    vtr.patch(model, "fastervlm", keep=0.1)   # model.generate(**inputs) now sees ~10% of visual tokens
    print(model.vtr.stats.summary())
    vtr.unpatch(model)                        # bitwise the original model again
"""
from vtr.api import VTRHandle, is_patched, patch, patched, unpatch
from vtr.calibrate import Calibration, calibrate
from vtr.config import ReducerConfig
from vtr.registry import list_reducers, register_reducer
from vtr.reducers.base import Reducer
from vtr.stats import ReductionStats
from vtr.visual import View, VisualTokens

__version__ = "0.1.0"

__all__ = [
    "patch", "unpatch", "patched", "is_patched", "calibrate", "Calibration", "VTRHandle", "list_reducers", "register_reducer",
    "ReducerConfig", "Reducer", "ReductionStats", "View", "VisualTokens", "__version__",
]
