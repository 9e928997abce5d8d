"""Package discovery (the rest of the metadata is in pyproject.toml).

Every package under ``vtr/`` ships, and so does every package under the top-level ``adapters/``
folder, as ``vtr.adapters[.…]``; a new subpackage needs no edit here.
"""
from setuptools import find_packages, setup

core = find_packages(include=["vtr", "vtr.*"])
adapters = ["vtr.adapters"] + [f"vtr.adapters.{name}" for name in find_packages("adapters")]
setup(packages=core + adapters)
