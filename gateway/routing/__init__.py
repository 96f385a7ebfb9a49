"""Routing: ordered fallbacks, retries, weighted choice and cooldown over provider adapters."""
