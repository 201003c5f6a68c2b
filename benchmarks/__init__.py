"""Benchmarks that print figures (``make bench``); see docs/BENCHMARKS.md. Not tests: nothing here asserts."""
