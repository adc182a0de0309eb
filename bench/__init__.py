"""Benchmarks that print figures and ratios measured in one process (never timed tests)."""
