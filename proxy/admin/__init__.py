"""Admin server (aiohttp): health, readiness, metrics, config and cluster dumps, shutdown, log level."""
