"""Built-in reducers, one module per method. Importing this package registers them."""
from vtr.reducers.base import Reducer
from vtr.reducers import aim, atp, fastervlm, fastv, fopru, globalcom2, pool, quota, random_subset, vtc_cls  # noqa: F401  (registration side effect)

__all__ = ["Reducer"]
