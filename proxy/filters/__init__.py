"""Synchronous per-request hooks: rate limit, trace context, header rules, authz."""
