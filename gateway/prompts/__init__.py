"""Prompts: the spec of `prompts/<name>.yaml` (spec.py) and how it renders into messages (render.py)."""
