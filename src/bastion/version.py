"""The package version, one place for the SDK, the CLI and the server to read it from."""

__version__ = "0.1.0"
