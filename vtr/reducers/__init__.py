"""Built-in reducers, one module per method. Importing this package registers them."""
from vtr.reducers.base import Reducer
from vtr.reducers import aim, atp, fastervlm, fastv, fopru, globalcom2, pool, quota, random_subset, vtc_cls  # noqa: F401  (registration side effect)
from vtr.reducers import cdpruner, dart, divprune, divrelay, vispruner, visionzip  # noqa: F401  (the 2025 methods and vtr's divrelay, issue 17)

__all__ = ["Reducer"]
