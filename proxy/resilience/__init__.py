"""Resilience policy cores (pure, clock-injected): classifier, retry, backoff, budget, limits, breaker."""
