"""Exceptions raised by connectors; all derive from :class:`ConnectorError`."""

from wire.errors import EdgeflowError

__all__ = ["ConnectorError", "SinkError", "SourceConfigError", "SourceError"]


class ConnectorError(EdgeflowError):
    """Root of every error raised by :mod:`connectors`."""


class SourceError(ConnectorError):
    """A source cannot deliver (unreachable endpoint, bad configuration)."""


class SinkError(ConnectorError):
    """A sink could not durably write what it was given."""


class SourceConfigError(SourceError, ValueError):
    """A source's configuration is invalid (a ValueError, so pydantic reports the field)."""
