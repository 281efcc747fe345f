"""Errors of the detection plugin that several of its modules raise."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key or value and what is allowed."""
