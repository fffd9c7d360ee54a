"""Benchmarks: micro (per hot module) and end-to-end (see BENCHMARKS.md)."""
