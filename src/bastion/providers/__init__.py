"""Upstream LLM providers: configuration, the HTTP client, format translation, the simulator."""
