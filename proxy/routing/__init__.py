"""Routing: compiled matchers, the immutable route table and weighted splits."""
