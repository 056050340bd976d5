"""Benchmarks run as scripts (`python -m pipeline.benchmarks.<name>`), not as timed tests."""
