"""Bridged APIs: other request and answer shapes (legacy completions, the Responses API, Anthropic
Messages) translated to and from chat completions, so every call goes through the one chat flow."""
