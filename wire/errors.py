"""The project's exception root and the errors of the ``wire`` layer.

Every exception edgeflow raises on purpose derives from :class:`EdgeflowError`; each package
has its own subclass (``OperatorError``, ``ConnectorError``, ``FlowError``, ``SimulatorError``,
``WireError``), so callers can catch one package's failures or all of them.
"""

__all__ = ["CodecError", "EdgeflowError", "RecordError", "WireError"]


class EdgeflowError(Exception):
    """Root of every error raised by edgeflow."""


class WireError(EdgeflowError):
    """Root of the errors raised by :mod:`wire`."""


class RecordError(WireError, ValueError):
    """A point, batch or field does not satisfy the canonical record contract."""


class CodecError(WireError, ValueError):
    """A payload cannot be decoded (or a value encoded) in a wire format."""
