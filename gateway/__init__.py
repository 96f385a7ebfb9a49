"""opsgate: a ModelOps gateway that serves governed prompts, routers, indexes and models."""

__version__ = "0.1.0"
