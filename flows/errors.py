"""Exceptions raised while loading configuration or building flows."""

__all__ = ["ConfigError", "FlowError"]


class FlowError(Exception):
    """Root of every error raised by :mod:`flows`."""


class ConfigError(FlowError, ValueError):
    """A site configuration or setting is invalid; the message names the bad field."""
