"""The gateway: an OpenAI- and Anthropic-compatible proxy in front of the providers that
routes, retries, caches, limits and traces every call, off the database on its request path."""
