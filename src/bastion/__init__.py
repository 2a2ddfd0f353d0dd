"""Bastion: a self-hosted LLMOps platform (gateway, tracing, prompts, evals, releases)."""

from bastion.client import Client
from bastion.settings import ConfigError, Settings, load_settings

__all__ = ["Client", "ConfigError", "Settings", "__version__", "load_settings"]

__version__ = "0.1.0"
