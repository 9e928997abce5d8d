"""Attention recomputed from q/k projections, so fast attention (SDPA) stays on.

- :mod:`~vtr.probes.vision`: hooks on vision-tower layers ([CLS] rows, patch-to-patch means);
- :mod:`~vtr.probes.decoder`: exact attention rows of a decoder layer, with RoPE.
"""
