"""Exceptions raised by the operators package; all derive from :class:`OperatorError`."""

from wire.errors import EdgeflowError, RecordError

__all__ = ["OperatorError", "RecordError", "RuleError"]


class OperatorError(EdgeflowError):
    """Root of every error raised by :mod:`operators`."""


class RuleError(OperatorError, ValueError):
    """An operator rule or parameter is invalid."""
