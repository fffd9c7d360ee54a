"""Upstream: endpoints, balancers, connection pools and clusters."""
