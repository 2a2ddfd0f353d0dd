"""Bastion: a self-hosted LLMOps platform (gateway, tracing, prompts, evals, releases)."""

from bastion.client import Client
from bastion.settings import ConfigError, Settings, load_settings
from bastion.version import __version__

__all__ = ["Client", "ConfigError", "Settings", "__version__", "load_settings"]
