"""Security: TLS contexts, SPIFFE identity, and the development CA tooling."""
