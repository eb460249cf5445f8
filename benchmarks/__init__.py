"""Accuracy, latency, size and memory benchmarks; results with their commands live in ``benchmarks/results/``."""
