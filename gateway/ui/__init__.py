"""The web dashboard (/ui): server-rendered pages over the registry, evals, monitoring and the request log."""
