"""Benchmarks of vtr: efficiency (``python -m benchmarks.efficiency``) and, later, accuracy."""
