"""The traffic store: the payloads of stored calls (opt-in), redacted, tied to their request-log row."""
