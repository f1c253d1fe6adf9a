"""Exceptions raised by connectors; all derive from :class:`ConnectorError`."""

__all__ = ["ConnectorError", "SinkError", "SourceError"]


class ConnectorError(Exception):
    """Root of every error raised by :mod:`connectors`."""


class SourceError(ConnectorError):
    """A source cannot deliver (unreachable endpoint, bad configuration)."""


class SinkError(ConnectorError):
    """A sink could not durably write what it was given."""
