"""Benchmarks for threadwork's hot paths, run as ``python -m bench.<name>``."""
