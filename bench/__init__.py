"""Benchmarks. Run them as scripts, e.g. ``.venv/bin/python bench/bridge_latency.py``."""
