"""Discovery: static, DNS and Kubernetes sources, each yielding immutable endpoint-set snapshots."""
