"""Built-in checks, one per file; each is registered in gateway/extensions.py under `opsgate.checks`."""
