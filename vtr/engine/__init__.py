"""How one patched call runs.

- :mod:`~vtr.engine.pre_llm`: encode → plan → splice → stats, before the LLM sees anything;
- :mod:`~vtr.engine.splice`: shrinking placeholder runs and gathering every sequence-aligned input;
- :mod:`~vtr.engine.in_llm`: running a reducer's in-LLM stage around one call, and its stats;
- :mod:`~vtr.engine.decoder_pruning`: dropping visual tokens between decoder layers at prefill.
"""
