"""Exceptions raised while loading configuration or building flows."""

from __future__ import annotations

from wire.errors import EdgeflowError

__all__ = ["ConfigError", "FlowError"]


class FlowError(EdgeflowError):
    """Root of every error raised by :mod:`flows`."""


class ConfigError(FlowError, ValueError):
    """A site configuration or setting is invalid.

    The message is complete on its own; ``file`` and ``field`` (a dotted path such as
    ``operators.1.window_ms``), when given, are put in front of it.
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.message = message
        self.file = file
        self.field = field
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, *, file: str | None = None, field: str | None = None) -> ConfigError:
        """Return the same error located in ``file`` / ``field`` (kept where already set)."""
        return ConfigError(self.message, file=self.file or file, field=self.field or field)
