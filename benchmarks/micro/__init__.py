"""Micro-benchmarks, one per hot module (DESIGN.md "Hot-path rules")."""
