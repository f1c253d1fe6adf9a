"""Exceptions raised by the operators package; all derive from :class:`OperatorError`."""

__all__ = ["OperatorError", "RecordError", "RuleError"]


class OperatorError(Exception):
    """Root of every error raised by :mod:`operators`."""


class RecordError(OperatorError, ValueError):
    """A point, batch or field does not satisfy the canonical record contract."""


class RuleError(OperatorError, ValueError):
    """An operator rule or parameter is invalid."""
