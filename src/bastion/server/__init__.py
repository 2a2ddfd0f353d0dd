"""The HTTP server: the API, the OTLP receiver and the gateway on one port, its workers and
its lifecycle."""
